"""Write networks as ONNX and robustness properties as VNN-LIB, for external verifiers (VNN-COMP).

- :func:`export_onnx`: ``torch.onnx.export`` with the TorchScript exporter (``dynamo=False``:
  the dynamo exporter needs ``onnxscript``), batch dimension dynamic, the model in eval mode
  (BatchNorm with its running statistics); :func:`relaxlab.engine.onnx.load_onnx` reads
  the file back.
- :func:`write_vnnlib`: the l_inf box around ``x`` clipped to the domain, and the *negation* of
  robustness as VNN-COMP expects it: the property holds (a counterexample exists) when some
  other class scores at least as high as the label,
  ``(assert (or (and (>= Y_j Y_label)) ...))``. A verifier answering ``unsat`` proves robustness.

Inputs are declared ``X_0 .. X_{n-1}`` in the row-major (C order) flattening of one input of
shape ``input_shape``, outputs ``Y_0 .. Y_{K-1}``. Numbers are written with ``repr`` of the
float64 value (round-trips exactly).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence

import torch
from torch import Tensor, nn


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


def _number(value: float) -> str:
    return repr(float(value))


def write_vnnlib(
    path: str | os.PathLike[str],
    x: Tensor,
    eps: float,
    label: int,
    num_classes: int,
    domain: tuple[float, float] = (0.0, 1.0),
) -> None:
    """Write the local robustness property of one input as a VNN-LIB file.

    :param path: the ``.vnnlib`` file to write.
    :param x: one input (any shape, no batch dimension), inside ``domain``.
    :param eps: the l_inf radius, ``>= 0``.
    :param label: the class that must stay on top, ``0 <= label < num_classes``.
    :param num_classes: the number of network outputs ``K``.
    :param domain: ``(lo, hi)`` the box is clipped to.
    :raises ValueError: for a bad radius, label or domain.
    """
    if not eps >= 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    if not 0 <= label < num_classes or num_classes < 2:
        raise ValueError(f"label {label} must lie in [0, {num_classes}) with at least 2 classes")
    lo, hi = float(domain[0]), float(domain[1])
    if lo > hi:
        raise ValueError(f"domain lower end exceeds its upper end: {domain!r}")
    flat = x.detach().to(torch.float64).reshape(-1).cpu()
    lower = (flat - eps).clamp(min=lo, max=hi).tolist()
    upper = (flat + eps).clamp(min=lo, max=hi).tolist()
    lines = [
        f"; local robustness of one input: l_inf radius {_number(eps)} clipped to [{_number(lo)}, {_number(hi)}], "
        f"label {label}",
        "; the property is the negation of robustness: unsat = robust",
        "",
    ]
    lines += [f"(declare-const X_{i} Real)" for i in range(len(lower))]
    lines.append("")
    lines += [f"(declare-const Y_{j} Real)" for j in range(num_classes)]
    lines += ["", "; input box"]
    for i, (low, high) in enumerate(zip(lower, upper, strict=True)):
        lines.append(f"(assert (<= X_{i} {_number(high)}))")
        lines.append(f"(assert (>= X_{i} {_number(low)}))")
    lines += ["", f"; some class scores at least as high as label {label}", "(assert (or"]
    lines += [f"    (and (>= Y_{j} Y_{label}))" for j in range(num_classes) if j != label]
    lines.append("))")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")
