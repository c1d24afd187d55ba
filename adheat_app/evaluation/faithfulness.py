"""Faithfulness: does the model's output depend on what a map ranks highest? Deletion and insertion curves (AOPC).

Region perturbation (Samek et al. 2017): the voxels of a scan are removed in
steps, in the order a map ranks them, and the explained output
(``--explain-output``) is recorded after every step. What removed voxels
become is ``--faithfulness-fill`` (:data:`FILLS`, :func:`perturbed_scans`):

- ``mean``: the fold's training mean image (the fill of occlusion,
  :mod:`adheat_app.attribution.references`);
- ``noisy-linear``: ROAD's noisy linear imputation (Rong et al. 2022,
  :mod:`adheat_app.evaluation.imputation`) from the kept brain voxels, seeded.
  A constant fill draws the removed shape into the scan, and the model can
  read the class from that outline; the imputation leaves none.

Units removed per step (:func:`unit_orders`):

- ``regions``: AAL3 regions ranked by their mean absolute relevance, removed
  :data:`STEPS` times a tenth of the regions at a time;
- ``blocks``: the voxels of the brain ranked by absolute relevance, removed
  :data:`BLOCK_PERCENT` % at a time (:data:`STEPS` steps, up to half the brain).

Orders: ``morf`` (most relevant first), ``lerf`` (least relevant first) and
``random`` (a seeded permutation of the units: the map-free control). Per scan
and order, AOPC (area over the perturbation curve) is the mean over the steps
of ``f(x) - f(x_k)`` (deletion: large when removing the top units hurts at
once), and insertion's area is the mean of ``f(x_k^ins) - f(x_0^ins)`` when the
units are put back in the same order (large when the top units restore the
output at once). With the ``mean`` fill, ``x_k^ins`` is the training mean image
with the first ``k`` steps' units taken from the scan (``x_0^ins``: the mean
image). With ``noisy-linear``, there is no image without a boundary to impute
from, so insertion starts from the scan with every unit of the curve removed
and imputed (the last deletion step) and ``x_k^ins`` is the scan with the units
not yet put back imputed anew from the kept voxels, those put back included
(``x_STEPS^ins``: the scan). A faithful map has ``morf`` deletion AOPC above
``random`` and ``lerf``.

Every (scan, step) is one row of padded forward passes
(:func:`~adheat_app.attribution.base.class_logits`): ``2 x 3 x STEPS`` rows per
scan, unit kind and map; the ``noisy-linear`` fill adds ``2 x STEPS - 1``
sparse solves per unit kind and order. :func:`aopc_table` averages per subject
and adds 95 % percentile bootstrap intervals over subjects, with the paired
difference to the random order, and ``faithful`` (on every row of a map and
unit kind): the interval of the most-relevant-first deletion AOPC minus the
random order's lies above 0. :func:`curve_table` keeps every step: the mean
explained output over subjects with its interval. With ``--faithfulness`` the
group level writes ``group/faithfulness.tsv`` and
``group/faithfulness_curves.tsv`` (:func:`run_faithfulness`) for every method
and its control maps, and draws the curves
(:func:`~adheat_app.plotting.faithfulness_curves`, group.html).
Both sidecars record a content hash of the fold models, scans, masks and maps
with the settings (:func:`recorded_settings`); a rerun that matches them skips
the step.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import nibabel as nib
import numpy as np
import pandas as pd
import torch
from torch import nn

from adheat_app.attribution.base import MethodContext, class_logits
from adheat_app.attribution.output import explained
from adheat_app.bids import Derivatives, is_complete
from adheat_app.cohort import Cohort
from adheat_app.config import RunConfig
from adheat_app.evaluation.imputation import NEIGHBOURS, NOISE, noisy_linear_fill
from adheat_app.inputs import channel_paths
from adheat_app.io import write_json, write_table
from adheat_app.layout import (CONTROLS, FAITHFULNESS, FAITHFULNESS_CURVES, MapName, faithfulness_figure,
                               group_table, sidecar_path)
from adheat_app.templates import get_atlas
from adheat_app.volumes import cache_key

LOGGER = logging.getLogger(__name__)

#: Perturbation steps per curve.
STEPS = 10
#: Share of the brain (%) removed per step of the ``blocks`` curves.
BLOCK_PERCENT = 5.0
ORDERS = ("morf", "lerf", "random")
#: Values of ``--faithfulness-fill``: what removed voxels become.
FILLS = ("mean", "noisy-linear")
#: Interval coverage.
LEVEL = 0.95
#: Columns of ``group/faithfulness_curves.tsv`` (:func:`curve_table`).
CURVE_COLUMNS = ("method", "kind", "units", "order", "direction", "step", "removed", "output", "ci_low", "ci_high",
                 "n_subjects")


def unit_counts(n_units: int) -> np.ndarray:
    """Units removed up to each of the :data:`STEPS` steps (a tenth of ``n_units`` more per step, rounded up)."""
    return np.ceil(np.linspace(n_units / STEPS, n_units, STEPS)).astype(int)


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
    counts = unit_counts(len(labels))
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


def perturbed_scans(scan: torch.Tensor, fill: torch.Tensor, masks: list[np.ndarray], brain: np.ndarray,
                    how: str, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The deletion and insertion images of one scan's curve, with the fill ``how`` (:data:`FILLS`).

    Parameters
    ----------
    scan, fill : torch.Tensor
        ``(C, X, Y, Z)`` the scan and the fold's training mean image.
    masks : list of numpy.ndarray
        Cumulative boolean masks of the removed voxels (every channel), one per step; inside ``brain``.
    brain : numpy.ndarray
        ``(X, Y, Z)`` boolean brain mask: the voxels the ``noisy-linear`` imputation interpolates from.
    how : str
        ``mean`` or ``noisy-linear`` (module docstring).
    rng : numpy.random.Generator
        Source of the ``noisy-linear`` noise.

    Returns
    -------
    deleted, inserted : torch.Tensor
        ``(steps, C, X, Y, Z)``: the scan with each step's units removed / put back.
    start : torch.Tensor
        ``(C, X, Y, Z)``: the insertion curve's first image (nothing put back yet).
    """
    if how == "mean":
        stack = torch.from_numpy(np.stack(masks)).to(scan.device)[:, None]
        return torch.where(stack, fill, scan), torch.where(stack, scan, fill), fill
    if how != "noisy-linear":
        raise ValueError(f"unknown faithfulness fill {how!r}; choose one of {FILLS}")
    image, mean = scan.cpu().numpy(), fill.cpu().numpy()

    def impute(removed: np.ndarray) -> np.ndarray:
        return noisy_linear_fill(image, removed, brain, mean, rng)

    deleted = np.stack([impute(mask) for mask in masks])
    inserted = np.stack([*(impute(masks[-1] & ~mask) for mask in masks[:-1]), image])
    return (torch.from_numpy(deleted).to(scan.device), torch.from_numpy(inserted).to(scan.device),
            torch.from_numpy(deleted[-1]).to(scan.device))


def perturbation_outputs(model: nn.Module, scan: torch.Tensor, images: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
                         target: int, context: MethodContext, output: str
                         ) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Explained outputs after each deletion step and each insertion step of one scan.

    Parameters
    ----------
    scan : torch.Tensor
        ``(C, X, Y, Z)`` the scan.
    images : tuple of torch.Tensor
        :func:`perturbed_scans`' deletion images, insertion images and first insertion image.

    Returns
    -------
    deleted, inserted : numpy.ndarray
        ``(steps,)`` outputs of the deletion and the insertion images.
    clean, empty : float
        Outputs of the scan and of the first insertion image.
    """
    deleted, inserted, start = images
    rows = torch.cat([scan[None], start[None], deleted, inserted])
    targets = torch.full((len(rows),), target, dtype=torch.int64, device=scan.device)
    values = explained(class_logits(model, rows, context), targets, output).cpu().numpy().astype(np.float64)
    steps = len(deleted)
    return values[2:2 + steps], values[2 + steps:], float(values[0]), float(values[1])


def scan_curves(model: nn.Module, scan: torch.Tensor, fill: torch.Tensor, relevance: np.ndarray, regions: np.ndarray,
                brain: np.ndarray, target: int, context: MethodContext, output: str, seed: int,
                how: str = "mean") -> list[dict]:
    """Deletion and insertion curves of one scan's map, for both unit kinds and every order (one row each).

    Each row holds the areas (``deletion_aopc``, ``insertion_area``), the outputs of the scan and the first
    insertion image (``clean``, ``fill``) and the curves themselves: ``deletion`` and ``insertion`` (``STEPS + 1``
    outputs, step 0 the scan / the first insertion image) and ``removed`` (the share removed at each step: of the
    regions for ``regions``, of the brain's voxels for ``blocks``). ``how`` is the fill (:data:`FILLS`); the
    ``noisy-linear`` noise is seeded by ``seed``.
    """
    rows = []
    rng = np.random.default_rng(seed)
    for kind, units in (("regions", regions), ("blocks", voxel_blocks(relevance, brain))):
        n_units = len(np.unique(units[units > 0]))
        for order, masks in unit_orders(relevance, units, seed).items():
            images = perturbed_scans(scan, fill, masks, brain, how, rng)
            deleted, inserted, clean, empty = perturbation_outputs(model, scan, images, target, context, output)
            share = (unit_counts(n_units) / max(1, n_units) if kind == "regions"
                     else np.array([m.sum() for m in masks]) / max(1, brain.sum()))
            rows.append({"units": kind, "order": order, "deletion_aopc": float(np.mean(clean - deleted)),
                         "insertion_area": float(np.mean(inserted - empty)), "clean": clean, "fill": empty,
                         "deletion": np.concatenate([[clean], deleted]),
                         "insertion": np.concatenate([[empty], inserted]),
                         "removed": np.concatenate([[0.0], share])})
    return rows


def _intervals(values: np.ndarray, draws: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """:data:`LEVEL` percentile bootstrap interval of the mean over subjects (axis 0) of ``values`` (NaN: no draws)."""
    if draws is None:
        missing = np.full(values.shape[1:], np.nan)
        return missing, missing
    low, high = np.percentile(values[draws].mean(axis=1), [50 * (1 - LEVEL), 50 * (1 + LEVEL)], axis=0)
    return low, high


def _draws(rng: np.random.Generator, n_bootstrap: int, subjects: int) -> np.ndarray | None:
    """``(n_bootstrap, subjects)`` subject indices of the resamples (None: no resampling)."""
    return rng.integers(0, subjects, size=(n_bootstrap, subjects)) if n_bootstrap and subjects else None


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
        draws = _draws(rng, n_bootstrap, subjects)
        for order in ORDERS:
            row = {"method": name, "units": units, "order": order, "n_subjects": subjects}
            for metric, table in wide.items():
                values = table[order].to_numpy()
                gap = values - table["random"].to_numpy()
                row[metric] = float(values.mean())
                row[f"{metric}_vs_random"] = float(gap.mean())
                for key, data in ((metric, values), (f"{metric}_vs_random", gap)):
                    low, high = _intervals(data, draws)
                    row[f"{key}_ci_low"], row[f"{key}_ci_high"] = float(low), float(high)
            rows.append(row)
    table = pd.DataFrame(rows)
    morf = table[table["order"] == "morf"].set_index(["method", "units"])["deletion_aopc_vs_random_ci_low"] > 0
    table["faithful"] = [bool(morf[(m, u)]) for m, u in zip(table["method"], table["units"])]
    return table


def curve_table(curves: pd.DataFrame, n_bootstrap: int, seed: int) -> pd.DataFrame:
    """Every step of the curves: per map, unit kind, order and direction, the mean output over subjects.

    Parameters
    ----------
    curves : pandas.DataFrame
        :func:`scan_curves` rows with ``method`` (the map's name) and ``subject`` added.
    n_bootstrap, seed : int
        Resamples of subjects (0: no intervals) and their seed.

    Returns
    -------
    pandas.DataFrame
        Columns :data:`CURVE_COLUMNS`: ``kind`` (``method`` or ``control``: a map of a
        :data:`~adheat_app.layout.CONTROLS` model), ``direction`` (``deletion``, ``insertion``), ``step`` (0: the
        scan / the first insertion image), ``removed`` (mean over scans of the share removed or put back: of the
        regions, or of the brain's voxels for ``blocks``), ``output`` (the explained output averaged per subject,
        then over subjects) and its :data:`LEVEL` percentile bootstrap interval over subjects.
    """
    rows = []
    rng = np.random.default_rng(seed)
    for (name, units, order), group in curves.groupby(["method", "units", "order"], sort=False):
        subjects = group["subject"].unique()
        draws = _draws(rng, n_bootstrap, len(subjects))
        removed = np.stack(group["removed"].to_numpy()).mean(axis=0)
        for direction in ("deletion", "insertion"):
            per_scan = pd.DataFrame(np.stack(group[direction].to_numpy()), index=group["subject"].to_numpy())
            values = per_scan.groupby(level=0).mean().loc[subjects].to_numpy()
            low, high = _intervals(values, draws)
            for step, mean in enumerate(values.mean(axis=0)):
                rows.append({"method": name, "kind": "control" if MapName.parse(name).is_control else "method",
                             "units": units, "order": order, "direction": direction, "step": step,
                             "removed": float(removed[step]), "output": float(mean), "ci_low": float(low[step]),
                             "ci_high": float(high[step]), "n_subjects": len(subjects)})
    return pd.DataFrame(rows, columns=list(CURVE_COLUMNS))


def map_names(methods: list[str], found: Callable[[str], bool]) -> list[str]:
    """Each method and its control maps (:data:`~adheat_app.layout.CONTROLS`) that ``found`` says exist."""
    return [name for method in methods for name in (method, *(MapName(method, c).desc for c in CONTROLS))
            if found(name)]


def fill_description(how: str) -> str:
    """One sentence on what removed voxels become with the fill ``how`` (:data:`FILLS`), for sidecars and text."""
    if how == "mean":
        return "the fold's training mean image"
    faces, edges = (next(w for o, w in NEIGHBOURS if sum(map(abs, o)) == n) for n in (1, 2))
    return (f"ROAD's noisy linear imputation (Rong et al. 2022): each removed voxel the weighted mean of its brain "
            f"neighbours (6 face neighbours {faces:.4f}, 12 edge neighbours {edges:.4f}, renormalised over those in "
            f"the brain), kept voxels fixed, plus Gaussian noise of {NOISE} times the channel's standard deviation "
            "over the kept brain voxels; removed groups touching no kept voxel take the training mean")


def recorded_settings(config: RunConfig, inputs_hash: str) -> dict:
    """What the faithfulness tables' sidecars record of their inputs and settings (a rerun that matches skips)."""
    return {"InputsHash": inputs_hash, "Steps": STEPS, "BlockPercent": BLOCK_PERCENT,
            "ExplainedOutput": config.heatmaps.explain_output, "Seed": config.execution.seed,
            "Fill": config.evaluation.faithfulness_fill, "NBootstrap": config.evaluation.n_bootstrap}


def write_faithfulness(derivs: Derivatives, config: RunConfig, curves: pd.DataFrame, n_scans: int,
                       inputs_hash: str) -> pd.DataFrame:
    """Write ``group/faithfulness.tsv``, ``group/faithfulness_curves.tsv`` (with sidecars) and the curves' figure.

    ``inputs_hash`` (the content hash of the fold models, scans, masks and maps) goes into both sidecars with the
    settings (:func:`recorded_settings`).
    """
    from adheat_app.plotting import faithfulness_curves, faithfulness_description, save_png

    seed, n_bootstrap, how = config.execution.seed, config.evaluation.n_bootstrap, config.evaluation.faithfulness_fill
    table, steps = aopc_table(curves, n_bootstrap, seed), curve_table(curves, n_bootstrap, seed)
    common = {**recorded_settings(config, inputs_hash), "Orders": list(ORDERS), "Units": ["regions", "blocks"],
              "Atlas": "AAL3", "FillDescription": fill_description(how),
              "Interval": f"{LEVEL:.0%} percentile bootstrap over subjects", "NScans": n_scans}
    if how == "noisy-linear":
        common["FillNoise"] = NOISE
    figure = faithfulness_figure(derivs.root)
    with derivs.lock():
        write_table(group_table(derivs.root, FAITHFULNESS), table, {
            "Description": "deletion (AOPC) and insertion curves of every map: units removed in the map's order and "
                           "filled (Fill); explained output by the fold model that held the scan out; mean over "
                           "subjects", **common})
        write_table(group_table(derivs.root, FAITHFULNESS_CURVES), steps, {
            "Description": "every step of the deletion and insertion curves of every map: the explained output "
                           "averaged per subject, then over subjects; step 0 is the scan (deletion) or the first "
                           "insertion image; removed is the share of the regions (units regions) or of the brain's "
                           "voxels (units blocks) removed or put back", **common})
        save_png(faithfulness_curves(steps, how), figure)
        write_json(sidecar_path(figure), {"Description": faithfulness_description(how), "Sources": [
            str(group_table(derivs.root, FAITHFULNESS_CURVES).relative_to(derivs.root))], "Fill": how})
    return table


def run_faithfulness(config: RunConfig, derivs: Derivatives, cohort: Cohort) -> pd.DataFrame | None:
    """``--faithfulness``: curves of every method's and control's per-scan maps (:func:`write_faithfulness`).

    Each scan is perturbed and explained by the fold model that held it out (its maps' model), with that fold's
    training mean as the fill (or as the fallback of ``noisy-linear``); scans in no test fold are left out. A rerun
    whose fold models, scans, masks, maps and settings match the tables' sidecars reads the table instead
    (``--overwrite`` recomputes). Returns the AOPC table, or None when the option is off or no map exists.
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
        files = [*models.files.values()]
        for a in scans:
            files += [*channel_paths(a.scan, models.channels), a.scan.mask,
                      *(p for n in names if (p := run.writer.heatmap(a, n)).is_file())]
        inputs_hash = cache_key(files)
        outputs = (group_table(derivs.root, FAITHFULNESS), group_table(derivs.root, FAITHFULNESS_CURVES),
                   faithfulness_figure(derivs.root))
        recorded = recorded_settings(config, inputs_hash)
        if (names and not config.execution.overwrite and all(is_complete(p, **recorded) for p in outputs[:2])
                and outputs[2].is_file()):
            LOGGER.info("faithfulness: %s is up to date (--overwrite recomputes)", outputs[0].name)
            return pd.read_csv(outputs[0], sep="\t")
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
                                       config.heatmaps.explain_output, seed, config.evaluation.faithfulness_fill):
                    rows.append({**row, "method": name, "subject": a.scan.subject})
        if not rows:
            return None
        return write_faithfulness(derivs, config, pd.DataFrame(rows), len(scans), inputs_hash)
