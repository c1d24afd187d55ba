"""Channel ablation: the output drop when one input channel is replaced by the training mean finds the channel used."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from adheat_app.attribution.base import MethodContext
from adheat_app.attribution.channel_ablation import ALL, ablation_table, channel_drops

GRID = (6, 7, 5)


class ReadsOneChannel(nn.Module):
    """Logits ``(0, w . x_c)``: the model reads channel ``c`` only (a hand-built weight map, the other channel 0)."""

    def __init__(self, channels: int, used: int):
        super().__init__()
        weight = torch.zeros((channels, *GRID))
        weight[used] = torch.linspace(-1.0, 2.0, int(np.prod(GRID))).reshape(GRID)
        self.register_buffer("weight", weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        evidence = (x * self.weight).flatten(1).sum(1)
        return torch.stack([torch.zeros_like(evidence), evidence], dim=1)


@pytest.mark.parametrize("used", [0, 1])
def test_channel_ablation_finds_the_channel_a_hand_built_model_reads(used):
    generator = torch.Generator().manual_seed(0)
    n, channels = 12, 2
    targets = torch.tensor([1] * 6 + [0] * 6)
    x = torch.randn((n, channels, *GRID), generator=generator)
    model = ReadsOneChannel(channels, used)
    sign = torch.where(targets == 1, 1.0, -1.0)[:, None, None, None]
    x[:, used] += sign * model.weight[used] / model.weight[used].norm()  # the read channel separates the classes
    fill = x.mean(0)
    context = MethodContext(4.0, "MNI152NLin2009cAsym", 5, 0, torch.device("cpu"))
    drops = channel_drops(model, x, targets, fill, context, "difference")
    assert drops.shape == (n, channels + 1)
    assert np.all(drops[:, 1 - used] == 0)  # the unread channel changes nothing
    np.testing.assert_allclose(drops[:, used], drops[:, -1], rtol=1e-5)  # the read one is the whole drop
    subjects = [f"s{i // 2}" for i in range(n)]  # two scans per subject: resampled together
    table = ablation_table(drops, subjects, ("intensity", "logjacobian"), n_bootstrap=500, seed=1).set_index("channel")
    names = ("intensity", "logjacobian")
    assert bool(table.loc[names[used], "used"]) and not bool(table.loc[names[1 - used], "used"])
    assert table.loc[names[used], "ci_low"] > 0 and table.loc[names[1 - used], "mean_drop"] == 0
    assert table.loc[names[used], "share_of_all"] == pytest.approx(1.0)
    assert table.loc[ALL, "n_subjects"] == 6 and table.loc[ALL, "n_scans"] == n
