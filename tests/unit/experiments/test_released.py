"""The paper's released MNIST networks: identified by SHA256, built as FC / CONV, refused otherwise."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from relaxlab.data.datasets import BUILTIN_DATASETS, DatasetNotFoundError
from relaxlab.experiments.released import (
    RELEASED_NETWORKS,
    ReleasedNetworkError,
    build_released,
    find_released_dir,
    identify_released,
    load_released,
    released_network,
    select_released,
)
from relaxlab.experiments.table10 import PAPER_ACCURACY, load_record, unpack_bits
from relaxlab.nn import Normalize

ROOT = Path(__file__).resolve().parents[3]
RECORD = ROOT / "tests" / "data" / "table10.json"
NAMES = [network.name for network in RELEASED_NETWORKS]


def _reference_forward(state: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """The released network's function written out from its state dict: normalise, then the layers."""
    z = (x - state["layers.0.mean"]) / state["layers.0.sigma"]
    if "layers.1.weight" in state:  # CONV: zero padding of the *normalised* image
        z = F.relu(F.conv2d(z, state["layers.1.weight"], state["layers.1.bias"], stride=2, padding=1))
        linears = (4, 6)
    else:
        linears = (2, 4, 6, 8, 10)
    z = z.flatten(1)
    for i, index in enumerate(linears):
        z = F.linear(z, state[f"layers.{index}.weight"], state[f"layers.{index}.bias"])
        if i < len(linears) - 1:
            z = F.relu(z)
    return z


def _synthetic_state(architecture: str) -> dict[str, torch.Tensor]:
    """A state dict in the released layout with random weights (for the checks that need no file)."""
    torch.manual_seed(0)
    shapes = {
        "FC": {
            "0.mean": (1,),
            "0.sigma": (1,),
            "2.weight": (400, 784),
            "2.bias": (400,),
            "4.weight": (200, 400),
            "4.bias": (200,),
            "6.weight": (100, 200),
            "6.bias": (100,),
            "8.weight": (100, 100),
            "8.bias": (100,),
            "10.weight": (10, 100),
            "10.bias": (10,),
        },
        "CONV": {
            "0.mean": (1,),
            "0.sigma": (1,),
            "1.weight": (16, 1, 4, 4),
            "1.bias": (16,),
            "4.weight": (100, 3136),
            "4.bias": (100,),
            "6.weight": (10, 100),
            "6.bias": (10,),
        },
    }
    return {f"layers.{k}": torch.rand(shape) + 0.1 for k, shape in shapes[architecture].items()}


def test_the_sha256_table_is_the_authors_sha256sums(released_dir: Path) -> None:
    listed = dict(reversed(line.split()) for line in (released_dir / "SHA256SUMS").read_text().splitlines())
    assert listed == {network.file_name: network.sha256 for network in RELEASED_NETWORKS}


@pytest.mark.parametrize("name", NAMES)
def test_a_released_file_loads_as_the_function_it_computes(
    name: str, released_dir: Path, embedded_test: tuple[torch.Tensor, torch.Tensor]
) -> None:
    """FC / CONV with Normalize first compute exactly the released state dict's function."""
    path = released_dir / f"{name}.pt"
    info, model = load_released(path)
    assert info == identify_released(path) == released_network(name)
    assert isinstance(model[0], Normalize) and not model.training
    x = embedded_test[0][:200]
    state = torch.load(path, map_location="cpu", weights_only=True)
    with torch.no_grad():
        torch.testing.assert_close(model(x), _reference_forward(state, x), rtol=1e-6, atol=1e-6)


def test_folding_the_normalisation_into_the_padded_convolution_would_change_conv(
    released_dir: Path, embedded_test: tuple[torch.Tensor, torch.Tensor]
) -> None:
    """Why Normalize stays a layer: the folded convolution pads with raw zeros, not normalised ones."""
    _, model = load_released(released_dir / "mnist_CONV_crown.pt")  # its kernels use their first row
    normalize, conv = model[0], model[1]
    x = embedded_test[0][:50]
    weight = conv.weight / normalize.std
    bias = conv.bias - (conv.weight * normalize.mean / normalize.std).sum(dim=(1, 2, 3))
    with torch.no_grad():
        folded = F.conv2d(x, weight, bias, stride=2, padding=1)
        kept = conv(normalize(x))
        inner = slice(1, -1)  # away from the border the two agree
        torch.testing.assert_close(folded[..., inner, inner], kept[..., inner, inner], rtol=1e-4, atol=1e-4)
        assert float((folded - kept).abs().max()) > 0.1


def test_clean_accuracy_on_the_embedded_images_is_the_full_runs_prefix(
    released_dir: Path, embedded_test: tuple[torch.Tensor, torch.Tensor]
) -> None:
    """Per image, the networks classify the 1,000 embedded test images as the recorded full run did."""
    record = load_record(RECORD)
    x, y = embedded_test
    for network in RELEASED_NETWORKS:
        _, model = load_released(released_dir / network.file_name)
        with torch.no_grad():
            correct = (model(x).argmax(1) == y).numpy()
        done, bits = record.correct[network.name]
        assert done >= len(y)
        assert (correct == unpack_bits(bits, len(y))).all(), network.name
        assert correct.mean() > 0.8, network.name


@pytest.mark.slow
def test_clean_accuracy_on_the_mnist_test_set_is_table_11(released_dir: Path) -> None:
    """All 10,000 MNIST test images: the paper's Acc (Table 11, eps_test = 0.3) to 0.05 points."""
    mnist = next(d for d in BUILTIN_DATASETS if d.name == "mnist")
    try:
        x, y = mnist.load("test")
    except DatasetNotFoundError as error:
        pytest.skip(str(error))
    assert len(y) == 10_000
    for network in RELEASED_NETWORKS:
        _, model = load_released(released_dir / network.file_name)
        with torch.no_grad():
            accuracy = 100.0 * float((model(x).argmax(1) == y).double().mean())
        assert abs(accuracy - PAPER_ACCURACY[network.name]) <= 0.05 + 1e-9, (network.name, accuracy)


def test_a_file_with_another_hash_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "mnist_FC_box.pt"
    torch.save(_synthetic_state("FC"), path)
    with pytest.raises(ReleasedNetworkError, match=r"not one of the paper's released networks \(sha256"):
        load_released(path)
    with pytest.raises(ReleasedNetworkError, match="no such file"):
        load_released(tmp_path / "missing.pt")


def test_a_released_file_under_another_released_name_is_refused(released_dir: Path, tmp_path: Path) -> None:
    shutil.copy(released_dir / "mnist_CONV_zono.pt", tmp_path / "mnist_FC_box.pt")
    with pytest.raises(ReleasedNetworkError, match="holds mnist_CONV_zono.pt, not mnist_FC_box.pt"):
        load_released(tmp_path / "mnist_FC_box.pt")
    shutil.copy(released_dir / "mnist_CONV_zono.pt", tmp_path / "renamed.pt")
    assert load_released(tmp_path / "renamed.pt")[0].name == "mnist_CONV_zono"


@pytest.mark.parametrize("architecture", ["FC", "CONV"])
def test_the_layout_is_checked_key_by_key_and_shape_by_shape(architecture: str) -> None:
    network = next(n for n in RELEASED_NETWORKS if n.architecture == architecture)
    state = _synthetic_state(architecture)
    x = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(
            build_released(network, state, source="s")(x), _reference_forward(state, x)
        )
    missing = {k: v for k, v in state.items() if k != "layers.0.sigma"}
    with pytest.raises(ReleasedNetworkError, match=rf"s: keys .* are not the {architecture} layout's"):
        build_released(network, missing, source="s")
    extra = {**state, "layers.99.weight": torch.zeros(1)}
    with pytest.raises(ReleasedNetworkError, match="are not the"):
        build_released(network, extra, source="s")
    key = next(k for k in state if k.endswith("weight"))
    wrong = {**state, key: state[key].T.contiguous() if state[key].dim() == 2 else state[key][:1]}
    with pytest.raises(ReleasedNetworkError, match=rf"s: {key} has shape .* the {architecture} layout needs"):
        build_released(network, wrong, source="s")
    with pytest.raises(ReleasedNetworkError, match="are not the"):
        build_released(network, [1, 2], source="s")  # type: ignore[arg-type]


def test_networks_are_selected_by_stem_or_architecture() -> None:
    assert select_released() == list(RELEASED_NETWORKS)
    assert [n.name for n in select_released(["conv"])] == NAMES[6:]
    assert [n.name for n in select_released(["mnist_CONV_zono.pt", "mnist_FC_box", "FC"])] == NAMES[:6] + [
        "mnist_CONV_zono"
    ]
    with pytest.raises(ReleasedNetworkError, match="'mnist_FC_boxx' is not one of .* use FC, CONV or one of"):
        select_released(["mnist_FC_boxx"])


def test_a_missing_directory_says_where_to_get_the_files(tmp_path: Path) -> None:
    with pytest.raises(ReleasedNetworkError, match=r"not in .*eth-sri/paradox \(commit 82c74cd\)"):
        find_released_dir(tmp_path)
