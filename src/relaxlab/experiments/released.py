"""The paper's released MNIST networks: the 12 Table 2 models of eth-sri/paradox.

The authors of *On the Paradox of Certified Training* released their MNIST networks
(repository eth-sri/paradox, ``pretrained/``, commit 82c74cd) as plain PyTorch state dicts,
``mnist_{FC,CONV}_{tag}.pt``, trained at eps_train = 0.3 with the relaxation the tag names. This
module knows them by their SHA256 and builds each as relaxlab's own ``FC`` or ``CONV`` architecture
(:mod:`relaxlab.architectures`), whose layer indices are exactly those of the released files:

- FC: ``Normalize`` (0), ``Flatten`` (1), ``Linear`` 784→400 (2), ReLU, 400→200 (4), ReLU,
  200→100 (6), ReLU, 100→100 (8), ReLU, 100→10 (10);
- CONV: ``Normalize`` (0), ``Conv2d(1, 16, 4, stride 2, padding 1)`` (1), ReLU, ``Flatten`` (3),
  ``Linear`` 3136→100 (4), ReLU, 100→10 (6).

The normalisation stays a layer of its own (:class:`relaxlab.nn.Normalize`, the file's
``mean`` and ``sigma``): CONV pads its input with zeros in normalised space, so folding the
normalisation into the convolution would change what the border computes.

A file is loaded only when its SHA256 is one of the twelve (the authors' ``SHA256SUMS``), with
``torch.load(weights_only=True)``, and only when its keys and shapes are exactly the layout's;
anything else is refused with one line that says what is wrong.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import attrs

if TYPE_CHECKING:
    from torch import nn

#: Environment variable naming the directory that holds the released ``mnist_*.pt`` files.
RELEASED_DIR_ENV = "RELAXLAB_PARADOX_PRETRAINED"
#: Where the released files are probed when neither an argument nor the variable names a directory.
DEFAULT_RELEASED_DIRS = ("paradox-pretrained", "~/.cache/relaxlab/paradox-pretrained")


class ReleasedNetworkError(ValueError):
    """A file is not one of the paper's released networks, or does not have its layout."""


@attrs.frozen(kw_only=True)
class ReleasedNetwork:
    """One released network.

    :param name: the file's stem (``"mnist_FC_box"``).
    :param architecture: ``"FC"`` or ``"CONV"`` (relaxlab's architectures of the same names).
    :param trained_with: the paper's name of the training method (``"IBP"``, ``"CROWN-IBP"``, ...).
    :param sha256: the file's SHA256 as the authors' ``SHA256SUMS`` lists it.
    """

    name: str
    architecture: str
    trained_with: str
    sha256: str

    @property
    def file_name(self) -> str:
        """``name + ".pt"``."""
        return f"{self.name}.pt"


def _released(architecture: str, tag: str, trained_with: str, sha256: str) -> ReleasedNetwork:
    return ReleasedNetwork(
        name=f"mnist_{architecture}_{tag}",
        architecture=architecture,
        trained_with=trained_with,
        sha256=sha256,
    )


#: The twelve networks, in the paper's row order (Table 2): FC first, then CONV.
RELEASED_NETWORKS: tuple[ReleasedNetwork, ...] = (
    _released("FC", "box", "IBP", "e63eb6de5b0e7aed5c303ef3b07724c4d8838e3dd9a88f1854b10588e62f5d9f"),
    _released("FC", "hbox", "hBox", "e28243809c52ca6fe74af6e70475449247262cb9fc01a4115238b57763d8840b"),
    _released("FC", "zono", "DeepZ", "a7a64318d131cd8f18f415360901d6994a83f4f0ea48b08ba2d4ac32c09407f8"),
    _released("FC", "crown", "CROWN", "e92b428dac7dee506414b8688df1bb34b4cdd7127561291b1131124b1f8782a4"),
    _released(
        "FC",
        "crownibp1to1",
        "CROWN-IBP (R)",
        "e97281b0929bba9b3c386229486784177a4bdd113607ccaad001fd67e6ccbbf4",
    ),
    _released(
        "FC", "crownibp1to0", "CROWN-IBP", "356d933105480aa925747ac92066000d0d417495e49085f71153e56c6a41e9e7"
    ),
    _released("CONV", "box", "IBP", "f5ef2e4501299d30573856a1c127fbe11930ab1919788c3affa48c581204c7f8"),
    _released("CONV", "hbox", "hBox", "0d3fad7b0dc57069c11bbbb84a3951cc9dee2fa3fa80a6292110f87077c8f410"),
    _released("CONV", "zono", "DeepZ", "876bc08baf2da84c93d44dbdfeb2eeac98fa6b7cc210d033592ee90453d5cea9"),
    _released("CONV", "crown", "CROWN", "1ff05f5db6d68a7b299e9348355a5ce9ee2b42556360178535cf6b9571d9f1f5"),
    _released(
        "CONV",
        "crownibp1to1",
        "CROWN-IBP (R)",
        "e5a2976d9613e7e5ad0f0794e4d0677b7983c62b7a1b66f69f05ab0b5a1bc3ec",
    ),
    _released(
        "CONV",
        "crownibp1to0",
        "CROWN-IBP",
        "0405fbb5ba45098de208d4548447d9de653c482a35a4ecf610e6b93771cb7d51",
    ),
)
_BY_SHA256 = {network.sha256: network for network in RELEASED_NETWORKS}
_BY_NAME = {network.name: network for network in RELEASED_NETWORKS}

#: The normalisation the networks were trained with (and hold as ``layers.0.mean`` / ``sigma``).
MNIST_MEAN, MNIST_SIGMA = 0.1307, 0.3081


def released_network(name: str) -> ReleasedNetwork:
    """The released network called ``name`` (its file stem, ``"mnist_CONV_zono"``; ``.pt`` may be given).

    :raises ReleasedNetworkError: for any other name (the message lists the twelve).
    """
    stem = name.removesuffix(".pt")
    if stem not in _BY_NAME:
        raise ReleasedNetworkError(
            f"{name!r} is not one of the paper's released networks; use FC, CONV or one of {', '.join(_BY_NAME)}"
        )
    return _BY_NAME[stem]


def select_released(names: Sequence[str] = ()) -> list[ReleasedNetwork]:
    """The released networks ``names`` picks, in the paper's row order.

    :param names: file stems (``"mnist_CONV_zono"``), or ``"FC"`` / ``"CONV"`` for the six of an
        architecture; none: all twelve.
    :raises ReleasedNetworkError: for a name that is neither.
    """
    if not names:
        return list(RELEASED_NETWORKS)
    chosen: set[str] = set()
    for name in names:
        if name.upper() in ("FC", "CONV"):
            chosen |= {n.name for n in RELEASED_NETWORKS if n.architecture == name.upper()}
        else:
            chosen.add(released_network(name).name)
    return [network for network in RELEASED_NETWORKS if network.name in chosen]


def find_released_dir(directory: str | os.PathLike[str] | None = None) -> Path:
    """The directory holding the released files: ``directory``, else ``$RELAXLAB_PARADOX_PRETRAINED``,
    else the first of :data:`DEFAULT_RELEASED_DIRS` that holds ``mnist_FC_box.pt``.

    :raises ReleasedNetworkError: when none does (the message says where to get the files).
    """
    if directory is not None:
        candidates = [Path(directory)]
    elif os.environ.get(RELEASED_DIR_ENV):
        candidates = [Path(os.environ[RELEASED_DIR_ENV])]
    else:
        candidates = [Path(d).expanduser() for d in DEFAULT_RELEASED_DIRS]
    for candidate in candidates:
        if (candidate / RELEASED_NETWORKS[0].file_name).is_file():
            return candidate
    raise ReleasedNetworkError(
        f"the paper's released networks are not in {', '.join(map(str, candidates))}: get pretrained/ of "
        f"github.com/eth-sri/paradox (commit 82c74cd) and name its directory (or set ${RELEASED_DIR_ENV})"
    )


def file_sha256(path: str | os.PathLike[str]) -> str:
    """SHA256 of a file's bytes, hex."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def identify_released(path: str | os.PathLike[str]) -> ReleasedNetwork:
    """Which released network the file at ``path`` is, by its SHA256.

    :raises ReleasedNetworkError: when the file is missing, its SHA256 is none of the twelve, or it is
        named as one released network but holds another.
    """
    path = Path(path)
    if not path.is_file():
        raise ReleasedNetworkError(f"{path}: no such file")
    sha256 = file_sha256(path)
    network = _BY_SHA256.get(sha256)
    if network is None:
        raise ReleasedNetworkError(
            f"{path}: not one of the paper's released networks (sha256 {sha256[:16]}... is not in their "
            "SHA256SUMS); relaxlab loads only the 12 files of eth-sri/paradox pretrained/ as released"
        )
    if path.stem in _BY_NAME and path.stem != network.name:
        raise ReleasedNetworkError(f"{path}: the file holds {network.file_name}, not {path.name}; rename it")
    return network


def load_released(path: str | os.PathLike[str]) -> tuple[ReleasedNetwork, nn.Sequential]:
    """Build a released network and load its weights.

    Example::

        info, model = load_released("paradox-pretrained/mnist_CONV_zono.pt")
        model(images)  # images (B, 1, 28, 28) in [0, 1]; model = Normalize, Conv2d, ...

    :param path: one of the twelve ``mnist_*.pt`` files (identified by SHA256, not by its name).
    :return: ``(info, model)``; ``model`` is relaxlab's ``FC`` / ``CONV`` ``nn.Sequential`` (float32,
        eval mode) computing ``net((x - mean) / sigma)`` for pixels ``x`` in [0, 1].
    :raises ReleasedNetworkError: for any file that is not a released network with the layout above.
    """
    import torch

    network = identify_released(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a released file with its hash always loads; say why this one did not
        raise ReleasedNetworkError(
            f"{path}: cannot be read as a weights-only state dict ({error})"
        ) from error
    return network, build_released(network, state, source=str(path))


def build_released(network: ReleasedNetwork, state: Mapping[str, object], *, source: str) -> nn.Sequential:
    """``network``'s architecture with the released state dict ``state`` loaded into it.

    :param state: ``layers.N.*`` tensors exactly as the released files hold them.
    :param source: where ``state`` came from, for the error message.
    :raises ReleasedNetworkError: when the keys or a shape are not exactly the layout's.
    """
    import torch

    from relaxlab.architectures import BUILTIN_ARCHITECTURES

    architecture = next(a for a in BUILTIN_ARCHITECTURES if a.name == network.architecture)
    model = architecture.build((1, 28, 28), 10, (MNIST_MEAN,), (MNIST_SIGMA,))
    expected = model.state_dict()
    # The released normalisation calls its std buffer ``sigma``; relaxlab's Normalize calls it ``std``.
    renamed = {f"layers.{'0.sigma' if key == '0.std' else key}": key for key in expected}
    if not isinstance(state, Mapping) or set(state) != set(renamed):
        found = sorted(map(str, state)) if isinstance(state, Mapping) else type(state).__name__
        raise ReleasedNetworkError(
            f"{source}: keys {found} are not the {network.architecture} layout's {sorted(renamed)}"
        )
    loaded = {}
    for released_key, key in renamed.items():
        value = state[released_key]
        if not isinstance(value, torch.Tensor) or value.shape != expected[key].shape:
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise ReleasedNetworkError(
                f"{source}: {released_key} has shape {shape}, the {network.architecture} layout needs "
                f"{tuple(expected[key].shape)}"
            )
        loaded[key] = value.to(expected[key].dtype)
    model.load_state_dict(loaded, strict=True)
    return model.eval()
