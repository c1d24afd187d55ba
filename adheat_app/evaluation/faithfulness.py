"""Faithfulness: does the model's output depend on what a map ranks highest? Deletion and insertion curves (AOPC).

Region perturbation (Samek et al. 2017): the voxels of a scan are removed in
steps, in the order a map ranks them, by replacing them with the fold's
training mean image (the fill of occlusion, :mod:`adheat_app.attribution.references`),
and the explained output (``--explain-output``) is recorded after every step.

Units removed per step (:func:`unit_orders`):

- ``regions``: AAL3 regions ranked by their mean absolute relevance, removed
  :data:`STEPS` times a tenth of the regions at a time;
- ``blocks``: the voxels of the brain ranked by absolute relevance, removed
  :data:`BLOCK_PERCENT` % at a time (:data:`STEPS` steps, up to half the brain).

Orders: ``morf`` (most relevant first), ``lerf`` (least relevant first) and
``random`` (a seeded permutation of the units: the map-free control). Per scan
and order, AOPC (area over the perturbation curve) is the mean over the steps
of ``f(x) - f(x_k)`` (deletion: large when removing the top units hurts at
once), and insertion's area is the mean of ``f(x_k^ins) - f(fill)`` when the
units are put back into the fill image in the same order (large when the top
units restore the output at once). A faithful map has ``morf`` deletion AOPC
above ``random`` and ``lerf``.

Every (scan, step) is one row of padded forward passes
(:func:`~adheat_app.attribution.base.class_logits`): ``2 x 3 x STEPS`` rows per
scan, unit kind and map. :func:`aopc_table` averages per subject and adds 95 %
percentile bootstrap intervals over subjects, with the paired difference to the
random order, and ``faithful`` (on every row of a map and unit kind): the
interval of the most-relevant-first deletion AOPC minus the random order's lies
above 0. With ``--faithfulness`` the group level writes
``group/faithfulness.tsv`` (:func:`run_faithfulness`) for every method and its
control maps.
"""

from __future__ import annotations

from collections.abc import Callable

import nibabel as nib
import numpy as np
import pandas as pd
import torch
from torch import nn

from adheat_app.attribution.base import MethodContext, class_logits
from adheat_app.attribution.output import explained
from adheat_app.bids import Derivatives
from adheat_app.cohort import Cohort
from adheat_app.config import RunConfig
from adheat_app.io import write_table
from adheat_app.layout import CONTROLS, FAITHFULNESS, MapName, group_table
from adheat_app.templates import get_atlas

#: Perturbation steps per curve.
STEPS = 10
#: Share of the brain (%) removed per step of the ``blocks`` curves.
BLOCK_PERCENT = 5.0
ORDERS = ("morf", "lerf", "random")
#: Interval coverage.
LEVEL = 0.95


def unit_orders(relevance: np.ndarray, units: np.ndarray, seed: int) -> dict[str, list[np.ndarray]]:
    """The units (label values of ``units`` > 0) in each order of :data:`ORDERS`, as cumulative voxel masks per step.

    Parameters
    ----------
    relevance : numpy.ndarray
        ``(X, Y, Z)`` map (absolute values are ranked).
    units : numpy.ndarray
        ``(X, Y, Z)`` integer labels of the units (0: never removed).
    seed : int
        Seed of the random order.

    Returns
    -------
    dict
        Per order, :data:`STEPS` boolean masks, each holding the units removed up to that step.
    """
    labels = np.unique(units[units > 0])
    score = np.array([np.abs(relevance[units == label]).mean() for label in labels])
    ranked = {"morf": labels[np.argsort(-score, kind="stable")], "lerf": labels[np.argsort(score, kind="stable")],
              "random": np.random.default_rng(seed).permutation(labels)}
    counts = np.ceil(np.linspace(len(labels) / STEPS, len(labels), STEPS)).astype(int)
    return {order: [np.isin(units, ranked[order][:count]) for count in counts] for order in ORDERS}


def voxel_blocks(relevance: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """Labels of :data:`BLOCK_PERCENT` % blocks of brain voxels ranked by ``|relevance|`` (1 = the top block).

    Only the top ``STEPS x BLOCK_PERCENT`` % are labelled: the ``blocks`` curves remove those, a block a step,
    and their ``lerf`` order starts from the least relevant of them.
    """
    index = np.flatnonzero(brain.ravel())
    ranked = index[np.argsort(-np.abs(relevance.ravel()[index]), kind="stable")]
    size = max(1, int(round(len(index) * BLOCK_PERCENT / 100)))
    labels = np.zeros(brain.size, np.int32)
    for block in range(STEPS):
        labels[ranked[block * size:(block + 1) * size]] = block + 1
    return labels.reshape(brain.shape)


def perturbation_outputs(model: nn.Module, scan: torch.Tensor, fill: torch.Tensor, masks: list[np.ndarray],
                         target: int, context: MethodContext, output: str
                         ) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Explained outputs after each deletion step and each insertion step of one scan.

    Parameters
    ----------
    scan, fill : torch.Tensor
        ``(C, X, Y, Z)`` the scan and the fold's training mean image.
    masks : list of numpy.ndarray
        Cumulative boolean masks of the removed voxels (every channel), one per step.

    Returns
    -------
    deleted, inserted : numpy.ndarray
        ``(steps,)`` outputs with the masked voxels replaced by the fill / only the masked voxels kept.
    clean, empty : float
        Outputs of the scan and of the fill image.
    """
    stack = torch.from_numpy(np.stack(masks)).to(scan.device)[:, None]
    deleted = torch.where(stack, fill, scan)
    inserted = torch.where(stack, scan, fill)
    rows = torch.cat([scan[None], fill[None], deleted, inserted])
    targets = torch.full((len(rows),), target, dtype=torch.int64, device=scan.device)
    values = explained(class_logits(model, rows, context), targets, output).cpu().numpy().astype(np.float64)
    steps = len(masks)
    return values[2:2 + steps], values[2 + steps:], float(values[0]), float(values[1])


def scan_curves(model: nn.Module, scan: torch.Tensor, fill: torch.Tensor, relevance: np.ndarray, regions: np.ndarray,
                brain: np.ndarray, target: int, context: MethodContext, output: str, seed: int) -> list[dict]:
    """Deletion AOPC and insertion area of one scan's map, for both unit kinds and every order (one row each)."""
    rows = []
    for kind, units in (("regions", regions), ("blocks", voxel_blocks(relevance, brain))):
        for order, masks in unit_orders(relevance, units, seed).items():
            deleted, inserted, clean, empty = perturbation_outputs(model, scan, fill, masks, target, context, output)
            rows.append({"units": kind, "order": order, "deletion_aopc": float(np.mean(clean - deleted)),
                         "insertion_area": float(np.mean(inserted - empty)), "clean": clean, "fill": empty})
    return rows


def aopc_table(curves: pd.DataFrame, n_bootstrap: int, seed: int) -> pd.DataFrame:
    """Per map, unit kind and order: mean over subjects with bootstrap intervals, and the paired gap to random.

    Parameters
    ----------
    curves : pandas.DataFrame
        One row per scan, map, unit kind and order (columns ``method`` (the map's name), ``subject``, ``units``,
        ``order``,
        ``deletion_aopc``, ``insertion_area``), as :func:`scan_curves` rows with the map and subject added.
    n_bootstrap : int
        Resamples of subjects (0: no intervals).
    seed : int
        Seed of the resampling.
    """
    rows = []
    per_subject = curves.groupby(["method", "units", "order", "subject"], sort=False)[
        ["deletion_aopc", "insertion_area"]].mean().reset_index()
    rng = np.random.default_rng(seed)
    for (name, units), group in per_subject.groupby(["method", "units"], sort=False):
        wide = {metric: group.pivot(index="subject", columns="order", values=metric)
                for metric in ("deletion_aopc", "insertion_area")}
        subjects = len(wide["deletion_aopc"])
        draws = rng.integers(0, subjects, size=(n_bootstrap, subjects)) if n_bootstrap and subjects else None
        for order in ORDERS:
            row = {"method": name, "units": units, "order": order, "n_subjects": subjects}
            for metric, table in wide.items():
                values = table[order].to_numpy()
                gap = values - table["random"].to_numpy()
                row[metric] = float(values.mean())
                row[f"{metric}_vs_random"] = float(gap.mean())
                for key, data in ((metric, values), (f"{metric}_vs_random", gap)):
                    low, high = (np.percentile(data[draws].mean(axis=1), [50 * (1 - LEVEL), 50 * (1 + LEVEL)])
                                 if draws is not None else (np.nan, np.nan))
                    row[f"{key}_ci_low"], row[f"{key}_ci_high"] = float(low), float(high)
            rows.append(row)
    table = pd.DataFrame(rows)
    morf = table[table["order"] == "morf"].set_index(["method", "units"])["deletion_aopc_vs_random_ci_low"] > 0
    table["faithful"] = [bool(morf[(m, u)]) for m, u in zip(table["method"], table["units"])]
    return table


def map_names(methods: list[str], found: Callable[[str], bool]) -> list[str]:
    """Each method and its control maps (:data:`~adheat_app.layout.CONTROLS`) that ``found`` says exist."""
    return [name for method in methods for name in (method, *(MapName(method, c).desc for c in CONTROLS))
            if found(name)]


def run_faithfulness(config: RunConfig, derivs: Derivatives, cohort: Cohort) -> pd.DataFrame | None:
    """``--faithfulness``: curves of every method's and control's per-scan maps; writes ``group/faithfulness.tsv``.

    Each scan is perturbed and explained by the fold model that held it out (its maps' model), with that fold's
    training mean as the fill; scans in no test fold are left out. Returns None when the option is off or no map
    exists.
    """
    from adheat_app.attribution.catalog import selected_methods
    from adheat_app.attribution.runner import heatmap_run

    if not config.evaluation.faithfulness:
        return None
    seed = config.execution.seed
    with heatmap_run(config, derivs, cohort) as run:
        if run is None:
            return None
        models = run.fold_models
        if not models.templates:
            models.load_training_means(needed=False)
        scans = [a for a in models.assignments if a.fold is not None and a.fold in models.templates]
        names = map_names(selected_methods(config.heatmaps.methods),
                          lambda name: bool(scans) and run.writer.heatmap(scans[0], name).is_file())
        atlas = get_atlas(models.context.resolution, cohort.space).array().astype(np.int32)
        rows = []
        for a in scans:
            brain = np.asarray(nib.load(a.scan.mask).dataobj) > 0
            x = models.tensor([a.index])[0]
            for name in names:
                path = run.writer.heatmap(a, name)
                if not path.is_file():
                    continue
                relevance = np.asarray(nib.load(path).dataobj, np.float32)
                for row in scan_curves(models.models[a.fold], x, models.templates[a.fold], relevance,
                                       np.where(brain, atlas, 0), brain, models.target(a), models.context,
                                       config.heatmaps.explain_output, seed):
                    rows.append({**row, "method": name, "subject": a.scan.subject})
        if not rows:
            return None
        table = aopc_table(pd.DataFrame(rows), config.evaluation.n_bootstrap, seed)
        with derivs.lock():
            write_table(group_table(derivs.root, FAITHFULNESS), table, {
                "Description": "deletion (AOPC) and insertion curves of every map: units removed in the map's order "
                               "and replaced by the fold's training mean; explained output by the fold model that "
                               "held the scan out; mean over subjects",
                "Steps": STEPS, "BlockPercent": BLOCK_PERCENT, "Orders": list(ORDERS), "Units": ["regions", "blocks"],
                "Atlas": "AAL3", "ExplainedOutput": config.heatmaps.explain_output, "Seed": seed,
                "Interval": f"{LEVEL:.0%} percentile bootstrap over subjects",
                "NBootstrap": config.evaluation.n_bootstrap, "NScans": len(scans)})
        return table
