"""Deletion and insertion curves (AOPC) on a model with a known dependence: output = sum over one region."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch import nn

from adheat_app.attribution.base import MethodContext
from adheat_app.evaluation.faithfulness import (CURVE_COLUMNS, ORDERS, STEPS, aopc_table, curve_table,
                                                scan_curves, unit_orders)
from adheat_app.evaluation.imputation import NOISE, noisy_linear_fill

GRID = (8, 10, 8)


class RegionSum(nn.Module):
    """Logits ``(0, sum of the input over a region)``."""

    def __init__(self, region: np.ndarray):
        super().__init__()
        self.register_buffer("region", torch.from_numpy(region.astype(np.float32)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total = (x * self.region).flatten(1).sum(1)
        return torch.stack([torch.zeros_like(total), total], dim=1)


def region_curves(how: str = "mean", subjects: int = 6) -> tuple[pd.DataFrame, np.ndarray]:
    """Curves of three maps of scans explained by :class:`RegionSum` of region 5 (of 16 regions of 40 voxels)."""
    regions = (np.arange(int(np.prod(GRID))).reshape(GRID) // 40 + 1).astype(np.int32)
    region = regions == 5
    brain = np.ones(GRID, bool)
    model = RegionSum(region).eval()
    context = MethodContext(4.0, "MNI152NLin2009cAsym", 8, 0, torch.device("cpu"))
    rng = np.random.default_rng(0)
    fill = torch.zeros((1, *GRID))
    rows = []
    for subject in range(subjects):
        scan = torch.from_numpy(rng.uniform(0.5, 1.5, (1, *GRID)).astype(np.float32))
        maps = {"region": region + 0.01 * rng.random(GRID), "random": rng.random(GRID),
                "complement": ~region + 0.01 * rng.random(GRID)}
        for name, relevance in maps.items():
            curves = scan_curves(model, scan, fill, relevance, regions, brain, 1, context, "difference", subject,
                                 how)
            rows += [{**row, "method": name, "subject": f"s{subject}"} for row in curves]
    return pd.DataFrame(rows), region


def test_deletion_ranks_the_region_s_map_above_a_random_map_and_its_complement():
    curves, _ = region_curves()
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


def test_curve_table_keeps_every_step_and_the_true_region_s_curve_falls_fastest():
    """The mean deletion curve of the true region's map drops to 0 at the first step, the random order's only in
    steps; step 0 is the clean output; sessions are averaged per subject before the subjects."""
    curves, _ = region_curves()
    twice = pd.concat([curves, curves[curves["subject"] == "s0"]])  # a second session of s0: no extra weight
    table = curve_table(twice, n_bootstrap=200, seed=0)
    assert list(table.columns) == list(CURVE_COLUMNS) and (table["n_subjects"] == 6).all()
    assert len(table) == 3 * 2 * len(ORDERS) * 2 * (STEPS + 1)
    assert set(table["kind"]) == {"method"} and set(table["direction"]) == {"deletion", "insertion"}
    rows = table.set_index(["method", "units", "order", "direction", "step"]).sort_index()
    curve = rows["output"]
    clean = curves.groupby("subject")["clean"].mean().mean()
    for order in ORDERS:
        np.testing.assert_allclose(curve[("region", "regions", order, "deletion", 0)], clean, rtol=1e-6)
    morf = curve[("region", "regions", "morf", "deletion")].to_numpy()
    random = curve[("region", "regions", "random", "deletion")].to_numpy()
    np.testing.assert_allclose(morf[1:], 0, atol=1e-4)
    assert (morf[1:] <= random[1:] + 1e-6).all() and (morf[1:STEPS] < random[1:STEPS]).any()
    insertion = curve[("region", "regions", "morf", "insertion")].to_numpy()
    np.testing.assert_allclose(insertion[[0, 1]], [0, clean], atol=1e-4)  # the region put back first
    removed = rows.loc[("region", "regions", "morf", "deletion"), "removed"].to_numpy()
    np.testing.assert_allclose(removed, np.concatenate([[0], np.ceil(np.linspace(1.6, 16, STEPS)) / 16]))
    blocks = rows.loc[("region", "blocks", "morf", "deletion"), "removed"].to_numpy()
    np.testing.assert_allclose(blocks, 0.05 * np.arange(STEPS + 1), atol=0.01)
    assert (rows["ci_low"] <= rows["output"] + 1e-9).all() and (rows["output"] <= rows["ci_high"] + 1e-9).all()


def ramp(shape: tuple[int, int, int]) -> np.ndarray:
    """Two channels, each a linear function of the voxel coordinates."""
    x, y, z = np.indices(shape, dtype=np.float64)
    return np.stack([1.0 * x + 2 * y - 0.5 * z, 3.0 - x + 0.25 * z]).astype(np.float32)


def box(shape: tuple[int, int, int], low: tuple[int, int, int], high: tuple[int, int, int]) -> np.ndarray:
    """A boolean mask of ``shape``, True from ``low`` to ``high`` (exclusive) on each axis."""
    mask = np.zeros(shape, bool)
    mask[tuple(slice(a, b) for a, b in zip(low, high))] = True
    return mask


def impute(image: np.ndarray, removed: np.ndarray, domain: np.ndarray, seed: int = 0, noise: float = NOISE
           ) -> np.ndarray:
    """:func:`noisy_linear_fill` with a fallback of 99 (far outside every ramp's values here)."""
    return noisy_linear_fill(image, removed, domain, np.full_like(image, 99.0), np.random.default_rng(seed), noise)


def test_noisy_linear_imputation_is_exact_on_a_ramp_and_its_noise_is_seeded():
    """Without noise the imputation of a linear function is exact inside a removed block; with ROAD's noise the
    imputed voxels scatter by NOISE x the channel's standard deviation, the same for the same seed; voxels not
    removed are never touched."""
    shape = (14, 16, 14)
    image, removed, domain = ramp(shape), box(shape, (3, 4, 3), (11, 12, 10)), np.ones(shape, bool)
    exact = impute(image, removed, domain, noise=0.0)
    np.testing.assert_allclose(exact, image, atol=1e-4)
    noisy, again, other = (impute(image, removed, domain, seed) for seed in (1, 1, 2))
    np.testing.assert_array_equal(noisy, again)
    assert not np.array_equal(noisy, other)
    np.testing.assert_array_equal(noisy[:, ~removed], image[:, ~removed])
    for channel in range(2):
        expected = NOISE * image[channel][~removed].std()
        spread = (noisy[channel] - exact[channel])[removed].std()
        assert abs(spread / expected - 1) < 0.1  # 448 voxels: the standard deviation within 10 %


def test_noisy_linear_imputation_stays_in_the_domain_and_falls_back_where_nothing_is_kept():
    """Voxels outside the domain are never read (changing them changes nothing) nor written; a removed group at the
    domain's edge is interpolated from its kept neighbours (within their range); a removed group with no kept
    neighbour takes the fallback."""
    shape = (12, 12, 12)
    image, domain = ramp(shape), box(shape, (1, 1, 1), (11, 11, 11))
    removed = box(shape, (1, 1, 1), (6, 6, 6))  # a corner of the domain: half its neighbours lie outside
    filled = impute(image, removed, domain, noise=0.0)
    shifted = image.copy()
    shifted[:, ~domain] = 1000.0
    np.testing.assert_allclose(impute(shifted, removed, domain, noise=0.0)[:, domain], filled[:, domain], atol=1e-5)
    np.testing.assert_array_equal(filled[:, ~removed], image[:, ~removed])
    kept = domain & ~removed
    for channel in range(2):
        values = filled[channel][removed]
        assert image[channel][kept].min() - 1e-4 <= values.min() and values.max() <= image[channel][kept].max() + 1e-4
    everything = impute(image, domain, domain)
    assert (everything[:, domain] == 99.0).all()  # no kept voxel: the fallback
    np.testing.assert_array_equal(everything[:, ~domain], image[:, ~domain])
    np.testing.assert_array_equal(impute(image, ~domain, domain), image)  # voxels outside the domain: not removed


def test_noisy_linear_curves_rank_the_true_region_first_and_end_at_the_scan():
    """With ROAD's fill the true region's map is still faithful; insertion ends at the scan (every unit put back)
    and starts where deletion ends (every unit of the curve imputed)."""
    curves, _ = region_curves("noisy-linear", subjects=4)
    table = aopc_table(curves, n_bootstrap=100, seed=0).set_index(["method", "units", "order"])
    assert table.loc[("region", "regions", "morf"), "faithful"]
    assert table.loc[("region", "regions", "morf"), "deletion_aopc"] > table.loc[
        ("random", "regions", "morf"), "deletion_aopc"]
    for row in curves.itertuples():
        np.testing.assert_allclose(row.insertion[-1], row.clean, rtol=1e-5)
        np.testing.assert_allclose(row.insertion[0], row.deletion[-1], rtol=1e-5)


def test_methods_text_says_which_fill_the_faithfulness_table_records(tmp_path):
    """The faithfulness section of the methods text appears with group/faithfulness.tsv and names the fill its
    sidecar records (not the configuration's), citing ROAD only for the imputation."""
    from adheat_app.bids import Derivatives
    from adheat_app.citation import provenance, render_citation, steps_present
    from adheat_app.config import build_config
    from adheat_app.io import write_table
    from adheat_app.layout import FAITHFULNESS, group_table

    config = build_config(tmp_path / "bids", tmp_path / "out", ("group",), {}, {})
    derivs = Derivatives(tmp_path / "out", tmp_path / "bids")
    assert "faithfulness" not in steps_present(derivs, "resnet3d")
    text, _ = render_citation(config, {"always"}, made=provenance(derivs, "resnet3d"))
    assert "Faithfulness" not in text
    write_table(group_table(derivs.root, FAITHFULNESS), pd.DataFrame({"method": ["IG"]}),
                {"Fill": "noisy-linear", "NBootstrap": 321})
    steps = steps_present(derivs, "resnet3d")
    assert "faithfulness" in steps
    text, bib = render_citation(config, steps, made=provenance(derivs, "resnet3d"))
    assert "## Faithfulness" in text and "noisy linear imputation [@rong2022consistent]" in text
    assert "face neighbours 1/12, edge neighbours 1/24" in text and "321 resamples" in text and "${" not in text
    assert "@inproceedings{rong2022consistent," in bib and "@article{samek2017evaluating," in bib
    write_table(group_table(derivs.root, FAITHFULNESS), pd.DataFrame({"method": ["IG"]}), {"NBootstrap": 5})
    text, bib = render_citation(config.replace("evaluation", faithfulness_fill="noisy-linear"), steps,
                                made=provenance(derivs, "resnet3d"))  # a table from before the fill was recorded
    assert "replaced by the mean image of the fold's training scans" in text and "rong2022consistent" not in bib
