"""Deletion and insertion curves (AOPC) on a model with a known dependence: output = sum over one region."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch import nn

from adheat_app.attribution.base import MethodContext
from adheat_app.evaluation.faithfulness import ORDERS, STEPS, aopc_table, scan_curves, unit_orders

GRID = (8, 10, 8)


class RegionSum(nn.Module):
    """Logits ``(0, sum of the input over a region)``."""

    def __init__(self, region: np.ndarray):
        super().__init__()
        self.register_buffer("region", torch.from_numpy(region.astype(np.float32)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total = (x * self.region).flatten(1).sum(1)
        return torch.stack([torch.zeros_like(total), total], dim=1)


def test_deletion_ranks_the_region_s_map_above_a_random_map_and_its_complement():
    regions = (np.arange(int(np.prod(GRID))).reshape(GRID) // 40 + 1).astype(np.int32)  # 16 regions of 40 voxels
    region = regions == 5
    brain = np.ones(GRID, bool)
    model = RegionSum(region).eval()
    context = MethodContext(4.0, "MNI152NLin2009cAsym", 8, 0, torch.device("cpu"))
    rng = np.random.default_rng(0)
    fill = torch.zeros((1, *GRID))
    rows = []
    for subject in range(6):
        scan = torch.from_numpy(rng.uniform(0.5, 1.5, (1, *GRID)).astype(np.float32))
        maps = {"region": region + 0.01 * rng.random(GRID), "random": rng.random(GRID),
                "complement": ~region + 0.01 * rng.random(GRID)}
        for name, relevance in maps.items():
            curves = scan_curves(model, scan, fill, relevance, regions, brain, 1, context, "difference", subject)
            rows += [{**row, "method": name, "subject": f"s{subject}"} for row in curves]
    curves = pd.DataFrame(rows)
    morf = curves[(curves["order"] == "morf") & (curves["units"] == "regions")].groupby("method")["deletion_aopc"]
    morf = morf.mean()
    clean = curves["clean"].mean()
    assert morf["region"] > morf["random"] > morf["complement"]
    np.testing.assert_allclose(morf["region"], clean, rtol=1e-5)  # the whole output goes at the first step
    np.testing.assert_allclose(morf["complement"], clean / STEPS, rtol=1e-5)  # ... or only at the last
    table = aopc_table(curves, n_bootstrap=200, seed=0)
    assert table.groupby("method")["faithful"].all().to_dict() == {"region": True, "random": False,
                                                                   "complement": False}
    table = table.set_index(["method", "units", "order"])
    assert set(table.index.get_level_values("order")) == set(ORDERS)
    top = table.loc[("region", "regions", "morf")]
    assert top["deletion_aopc_vs_random_ci_low"] > 0 and top["insertion_area_vs_random_ci_low"] > 0
    assert table.loc[("complement", "regions", "morf"), "deletion_aopc_vs_random_ci_high"] < 0
    blocks = table.loc[("region", "blocks", "morf")]
    assert blocks["deletion_aopc"] > table.loc[("random", "blocks", "morf"), "deletion_aopc"]


def test_unit_orders_are_cumulative_and_the_random_order_is_seeded():
    units = np.repeat(np.arange(1, 21), 4).reshape(8, 10)
    relevance = units.astype(float)
    orders = unit_orders(relevance, units, seed=3)
    assert [int(m.sum()) for m in orders["morf"]] == [8 * (k + 1) for k in range(STEPS)]
    assert orders["morf"][0][units == 20].all() and orders["lerf"][0][units == 1].all()
    assert all(np.array_equal(a, b) for a, b in zip(orders["random"], unit_orders(relevance, units, 3)["random"]))
