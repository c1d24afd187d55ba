"""CNN architectures: registry names, output shapes at 4 mm and 2 mm, parameter counts, layer rules.

The heatmap methods rely on structural rules, which
:mod:`adheat_app.models._contract` checks when a model registers; the tests
here run over every registered model.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from adheat_app.models import MODELS
from adheat_app.models._contract import check_model, contract_violations

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


def test_every_model_file_registers_the_model_it_is_named_after():
    import pkgutil

    import adheat_app.models

    files = {m.name for m in pkgutil.iter_modules(adheat_app.models.__path__) if not m.name.startswith("_")}
    assert set(MODELS) == files and {"rieke2018", "wang2023", "resnet3d"} <= files


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("shape", [*GRID_4MM, GRID_2MM])
def test_logits_shape_at_4mm_and_2mm(name, shape):
    torch.manual_seed(0)
    model = MODELS[name](shape).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 1, *shape))
    assert out.shape == (1, 2) and out.dtype == torch.float32 and torch.isfinite(out).all()


@pytest.mark.parametrize("name, shape", sorted(PARAMETERS))
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


@pytest.mark.parametrize("name", sorted(MODELS))
def test_too_small_grid_is_a_clear_error(name):
    with pytest.raises(ValueError, match="too small"):
        MODELS[name]((6, 6, 6))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_keeps_the_contract_the_heatmap_methods_rely_on(name):
    """What registering checked, on the other 4 mm grid: last_conv, torch.flatten, ReLU modules, conv -> BN, fx."""
    assert contract_violations(MODELS[name](GRID_4MM[1])) == []
    assert contract_violations(MODELS[name](GRID_4MM[1], 2), 2) == []


class _Broken(nn.Module):
    """Breaks every rule: no last_conv, nn.Flatten, one in-place ReLU called twice, BN after the ReLU."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(1, 2, 3)
        self.relu = nn.ReLU(inplace=True)
        self.bn = nn.BatchNorm3d(2)
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.flat = nn.Flatten()
        self.fc = nn.Linear(2, 3)

    def forward(self, x):
        return self.fc(self.flat(self.pool(self.relu(self.bn(self.relu(self.conv(x)))))))


class _Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(1, 2, 3)
        self.bn = nn.BatchNorm3d(2)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(2, 2)

    @property
    def last_conv(self):
        return self.conv

    def forward(self, x):
        x = self.relu(self.bn(self.conv(x)))
        if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
            x = -x
        return self.fc(torch.flatten(x.mean((2, 3, 4), keepdim=True), 1))


def test_registering_a_model_that_breaks_the_contract_fails_naming_every_rule():
    with pytest.raises(TypeError, match=r"'broken'.*last_conv.*nn.Flatten.*inplace.*BatchNorm3d.*logits \(N, 2\)"):
        MODELS.register("broken")(lambda shape, channels=1: _Broken())
    with pytest.raises(TypeError, match=r"'untraceable'.*torch.fx cannot trace"):
        MODELS.register("untraceable")(lambda shape, channels=1: _Untraceable())
    with pytest.raises(TypeError, match=r"'onechannel'.*builder must take the number of input channels"):
        MODELS.register("onechannel")(lambda shape: MODELS["rieke2018"](shape))
    assert not {"broken", "untraceable", "onechannel"} & set(MODELS)
    state = torch.random.get_rng_state()
    check_model("rieke2018", MODELS["rieke2018"])
    assert torch.equal(torch.random.get_rng_state(), state)  # checking leaves the caller's random state alone


def test_resnet_last_conv_is_in_the_last_block():
    model = MODELS["resnet3d"](GRID_4MM[0])
    assert model.last_conv is model.stages[-1].conv2
