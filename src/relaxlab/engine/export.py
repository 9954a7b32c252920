"""Write networks as ONNX and robustness properties as VNN-LIB, for external verifiers (VNN-COMP).

- :func:`export_onnx`: ``torch.onnx.export`` with the TorchScript exporter (``dynamo=False``:
  the dynamo exporter needs ``onnxscript``), batch dimension dynamic, the model in eval mode
  (BatchNorm with its running statistics); :func:`relaxlab.engine.onnx.load_onnx` reads
  the file back.
- :func:`write_vnnlib` (its home is :mod:`relaxlab.engine.vnnlib`, with the reader; imported
  here for the callers of this module): the l_inf box around ``x`` clipped to the domain, and
  the *negation* of robustness as VNN-COMP expects it.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence

import torch
from torch import nn

from relaxlab.engine.vnnlib import write_vnnlib

__all__ = ["export_onnx", "write_vnnlib"]


def export_onnx(
    model: nn.Module, input_shape: Sequence[int], path: str | os.PathLike[str], *, opset: int = 17
) -> None:
    """Write ``model`` to an ONNX file (float32, input ``x`` of shape ``(batch, *input_shape)``, output ``y``).

    :param model: the network; exported in eval mode, its mode restored afterwards.
    :param input_shape: shape of one input, without the batch dimension.
    :param path: the ``.onnx`` file to write.
    :param opset: ONNX opset version.
    """
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else None
    example = torch.zeros(1, *(int(s) for s in input_shape), device=device)
    was_training = model.training
    original_dtype = parameter.dtype if parameter is not None else torch.float32
    model.eval()
    try:
        model.float()
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the TorchScript exporter warns that it is deprecated
            torch.onnx.export(
                model,
                (example,),
                os.fspath(path),
                dynamo=False,
                input_names=["x"],
                output_names=["y"],
                dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}},
                opset_version=opset,
                # keep BatchNorm a node of its own (EVAL would fold it into the convolution before it,
                # which rounds differently); the model is in eval mode, so it exports inference BN
                training=torch.onnx.TrainingMode.PRESERVE,
            )
    finally:
        model.to(original_dtype)
        model.train(was_training)
