"""CNN architectures: registry names, output shapes at 4 mm and 2 mm, parameter counts, layer rules.

The heatmap methods rely on structural rules (``torch.flatten`` in forward, one
non-inplace ``nn.ReLU`` module per activation, ``model.last_conv``, BatchNorm
directly after its conv), so these are checked on every registered model.
"""

from __future__ import annotations

import inspect

import pytest
import torch
from torch import nn

from adheat_app.models import MODELS

GRID_4MM = ((50, 59, 48), (49, 58, 49))
GRID_2MM = (97, 115, 97)
GRID_1MM = (193, 229, 193)

#: Trainable parameters per model and grid (recorded; the heads of the plain CNNs depend on the grid).
PARAMETERS = {
    ("rieke2018", GRID_4MM[0]): 89_858, ("rieke2018", GRID_2MM): 98_050, ("rieke2018", GRID_1MM): 737_026,
    ("wang2023", GRID_4MM[0]): 185_426, ("wang2023", GRID_2MM): 186_962, ("wang2023", GRID_1MM): 239_186,
    ("resnet3d", GRID_4MM[0]): 225_930, ("resnet3d", GRID_2MM): 225_930, ("resnet3d", GRID_1MM): 225_930,
}


def n_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_registry_holds_the_three_models():
    assert set(MODELS) == {"rieke2018", "wang2023", "resnet3d"}


@pytest.mark.parametrize("name", ["rieke2018", "wang2023", "resnet3d"])
@pytest.mark.parametrize("shape", [*GRID_4MM, GRID_2MM])
def test_logits_shape_at_4mm_and_2mm(name, shape):
    torch.manual_seed(0)
    model = MODELS[name](shape).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 1, *shape))
    assert out.shape == (1, 2) and out.dtype == torch.float32 and torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["rieke2018", "wang2023", "resnet3d"])
@pytest.mark.parametrize("shape", [GRID_4MM[0], GRID_2MM, GRID_1MM])
def test_parameter_counts(name, shape):
    assert n_parameters(MODELS[name](shape)) == PARAMETERS[(name, shape)]


def test_published_layout_on_the_1mm_grid():
    """Rieke: 64x4x5x4 features into FC 128; Wang A24: 7x9x7 last conv, pooled 3x4x3, into FC 64."""
    rieke = MODELS["rieke2018"](GRID_1MM)
    assert (rieke.layout.padded, rieke.layout.ceil_mode) == (False, False)
    assert rieke.head[1].in_features == 64 * 4 * 5 * 4 and rieke.head[1].out_features == 128
    assert [m.p for m in rieke.modules() if isinstance(m, nn.Dropout)] == [0.8]
    wang = MODELS["wang2023"](GRID_1MM)
    assert (wang.layout.padded, wang.layout.ceil_mode) == (False, False)
    assert [m.kernel_size[0] for m in wang.modules() if isinstance(m, nn.Conv3d)] == [7, 5, 5, 3, 3]
    assert wang.head[0].in_features == 24 * 3 * 4 * 3 and wang.head[0].out_features == 64


def test_coarse_grids_switch_layout_only_when_needed():
    assert MODELS["rieke2018"](GRID_2MM).layout.ceil_mode is False
    assert MODELS["rieke2018"](GRID_4MM[0]).layout.ceil_mode is True
    assert MODELS["wang2023"](GRID_2MM).layout.ceil_mode is True
    assert MODELS["wang2023"](GRID_4MM[0]).layout.padded is True


def test_wang_width_argument():
    model = MODELS["wang2023"](GRID_4MM[0], width=28)
    assert {m.out_channels for m in model.modules() if isinstance(m, nn.Conv3d)} == {28}


@pytest.mark.parametrize("name", ["rieke2018", "wang2023", "resnet3d"])
def test_too_small_grid_is_a_clear_error(name):
    with pytest.raises(ValueError, match="too small"):
        MODELS[name]((6, 6, 6))


@pytest.mark.parametrize("name", ["rieke2018", "wang2023", "resnet3d"])
def test_structure_needed_by_heatmap_methods(name):
    model = MODELS[name](GRID_4MM[1])
    modules = list(model.modules())
    assert not any(isinstance(m, nn.Flatten) for m in modules)
    assert "torch.flatten(" in inspect.getsource(type(model).forward)
    relus = [m for m in modules if isinstance(m, nn.ReLU)]
    assert relus and len({id(m) for m in relus}) == len(relus) and not any(m.inplace for m in relus)
    convs = [m for m in modules if isinstance(m, nn.Conv3d)]
    assert model.last_conv is convs[-1]
    names = list(dict(model.named_modules()))
    assert not any(n.startswith("last_conv") for n in names)  # a property, not a second registration
    leaves = [m for m in modules if not list(m.children())]
    for i, m in enumerate(leaves):
        if isinstance(m, nn.BatchNorm3d):
            assert isinstance(leaves[i - 1], nn.Conv3d) and leaves[i - 1].out_channels == m.num_features


def test_resnet_last_conv_is_in_the_last_block():
    model = MODELS["resnet3d"](GRID_4MM[0])
    assert model.last_conv is model.stages[-1].conv2
