"""The twin test: how much of what the disease does to the model lies in a map's top region.

A simulated cohort made with ``adheat-simulate --twins`` holds, for every AD
and MCI scan, the same scan without its planted atrophy
(:func:`~adheat_app.layout.simulation_twin`). Each twin is preprocessed as its
scan was (:func:`preprocess_twins`: the registration backend, brain
extraction, intensity normalisation and seed the scan's sidecar records, into
:func:`~adheat_app.layout.twins_root`; done twins are skipped on reruns) and
read by the fold model that held the subject out (scans in no test fold, such
as MCI scans, which every fold model explains together, are left out). The
difference of the model's output ``f`` between scan and twin is what the
disease does to the model. ``f`` is the log-odds of the positive class, ``z_positive -
z_negative``, whatever ``--target`` and ``--explain-output`` say: additive and
never saturating, so a share of it means the same for a confident and an
unsure subject.

Per scan, a region ``R`` of the scan is replaced by the twin's voxels (every
input channel), and its share is ``(f(scan with R from the twin) - f(scan)) /
(f(twin) - f(scan))``: 1 when ``R`` carries the whole difference the model
sees, 0 when it carries none (:func:`region_shares`). All regions have the
volume ``n`` of the subject's true region, so the three kinds compare:

- ``truth``: the subject's own atrophied region (its template-space region
  map above :data:`~adheat_app.evaluation.references.simulation.THRESHOLD`,
  inside the scan's brain mask): what the planted region itself recovers at
  that volume, meant as the ceiling; it is not an upper bound, since
  preprocessing spreads the disease's trace beyond the region (registration
  responds to it, and the log Jacobian channel carries that response);
- each map's top region: its ``n`` voxels of highest absolute relevance inside
  the brain mask (:func:`top_region`);
- ``random``: :data:`RANDOM_DRAWS` seeded random grey-matter regions, each the
  ``n`` grey-matter voxels nearest to a random grey-matter voxel
  (:func:`random_regions`): the chance level of a compact region of that
  volume.

A scan whose disease effect ``|f(twin) - f(scan)|`` is below
:data:`MIN_EFFECT` has no share (the ratio would divide by about 0); the table
counts the subjects left out so. Sessions of a subject are averaged, and
:func:`share_table` gives per map the mean share over subjects with a basic
bootstrap interval over subjects, the random regions' and the true region's on the
same subjects and resamples, the paired difference to random and
``above_random`` (that difference's interval lies above 0). The group level
writes ``group/twin_test.tsv`` (:func:`run_twin_test`) when the input dataset
has twins, unless ``--no-twin-test``; it is skipped when its sidecar records
the same inputs.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import torch
from torch import nn

from adheat_app.attribution.base import MethodContext, class_logits
from adheat_app.attribution.fold_models import Assignment, FoldModels
from adheat_app.attribution.output import explained
from adheat_app.bids import Derivatives, T1wInput, is_complete
from adheat_app.cohort import Cohort, Scan
from adheat_app.config import RunConfig
from adheat_app.evaluation.controls import grey_matter_prior
from adheat_app.evaluation.intervals import LEVEL, basic_interval
from adheat_app.evaluation.references.simulation import THRESHOLD
from adheat_app.inputs import channel_paths, load_inputs
from adheat_app.io import read_json, write_table
from adheat_app.layout import (
    TWIN_TEST, group_table, logjacobian_path, preproc_paths, sidecar_path, simulation_root, simulation_subject_map,
    simulation_twin, twins_root,
)
from adheat_app.templates import Template
from adheat_app.volumes import cache_key

LOGGER = logging.getLogger(__name__)

#: Random grey-matter regions per scan.
RANDOM_DRAWS = 10
#: Smallest disease effect ``|f(twin) - f(scan)|`` (log-odds) with a defined share.
MIN_EFFECT = 0.1
#: The region names of the table's controls: the true region and the random regions.
TRUTH, RANDOM = "truth", "random"


def top_region(relevance: np.ndarray, brain: np.ndarray, size: int) -> np.ndarray:
    """The ``size`` voxels of ``brain`` with the highest ``|relevance|`` (ties: the first in voxel order)."""
    index = np.flatnonzero(brain.ravel())
    chosen = index[np.argsort(-np.abs(relevance.ravel()[index]), kind="stable")[:size]]
    region = np.zeros(brain.size, bool)
    region[chosen] = True
    return region.reshape(brain.shape)


def random_regions(grey: np.ndarray, size: int, draws: int, rng: np.random.Generator) -> list[np.ndarray]:
    """``draws`` compact regions: each the ``size`` voxels of ``grey`` nearest to a random voxel of ``grey``."""
    coords = np.argwhere(grey)
    size = min(size, len(coords))
    regions = []
    for centre in rng.integers(0, len(coords), size=draws):
        distance = ((coords - coords[centre]) ** 2).sum(axis=1)
        nearest = coords[np.argpartition(distance, size - 1)[:size]]
        region = np.zeros(grey.shape, bool)
        region[tuple(nearest.T)] = True
        regions.append(region)
    return regions


def positive_log_odds(model: nn.Module, rows: torch.Tensor, context: MethodContext) -> torch.Tensor:
    """``z_1 - z_0`` of every row ``(N,)``: the log-odds of the positive class."""
    positive = torch.ones(len(rows), dtype=torch.int64, device=rows.device)
    return explained(class_logits(model, rows, context), positive, "difference")


def region_shares(model: nn.Module, scan: torch.Tensor, twin: torch.Tensor, regions: list[np.ndarray],
                  context: MethodContext) -> tuple[float, np.ndarray]:
    """The disease effect on the model and the share of it each region recovers.

    Parameters
    ----------
    scan, twin : torch.Tensor
        ``(C, X, Y, Z)`` the scan and its twin, as the model reads them.
    regions : list of numpy.ndarray
        Boolean ``(X, Y, Z)`` masks; each is replaced by the twin's voxels in every channel.

    Returns
    -------
    effect : float
        ``f(scan) - f(twin)`` (log-odds of the positive class).
    shares : numpy.ndarray
        ``(len(regions),)`` ``(f(scan with the region from the twin) - f(scan)) / (f(twin) - f(scan))``; NaN
        when ``|effect|`` is below :data:`MIN_EFFECT`.
    """
    outputs = [positive_log_odds(model, torch.stack([scan, twin]), context)]
    for start in range(0, len(regions), context.batch):  # at most one batch of perturbed scans in memory
        masks = torch.from_numpy(np.stack(regions[start:start + context.batch])).to(scan.device)[:, None]
        outputs.append(positive_log_odds(model, torch.where(masks, twin, scan), context))
    values = torch.cat(outputs).cpu().numpy().astype(np.float64)
    effect = values[0] - values[1]
    if abs(effect) < MIN_EFFECT:
        return float(effect), np.full(len(regions), np.nan)
    return float(effect), (values[2:] - values[0]) / -effect


def share_table(rows: pd.DataFrame, n_bootstrap: int, seed: int) -> pd.DataFrame:
    """Per map: the mean share over subjects, the random regions' and the true region's, with bootstrap intervals.

    Parameters
    ----------
    rows : pandas.DataFrame
        One row per scan and region (columns ``subject``, ``region`` (a map's name, :data:`TRUTH` or
        :data:`RANDOM`, the mean over its draws), ``share`` (NaN: undefined), ``effect``, ``percent`` (the
        region's volume in % of the brain)).
    n_bootstrap : int
        Resamples of subjects (0: no intervals).
    seed : int
        Seed of the resampling.

    Returns
    -------
    pandas.DataFrame
        One row per map: ``n_subjects`` (with a defined share), ``n_undefined`` (disease effect below
        :data:`MIN_EFFECT` in every scan), ``region_percent``, ``disease_effect``, then ``share``,
        ``random_share``, ``truth_share`` and ``share_vs_random`` (paired), each with ``_ci_low`` and
        ``_ci_high``, and ``above_random``.
    """
    shares = rows.groupby(["subject", "region"], sort=False)["share"].mean().unstack("region")
    subject_means = rows.groupby("subject", sort=False)[["effect", "percent"]].mean()
    undefined = int(shares[TRUTH].isna().sum())
    rng = np.random.default_rng(seed)
    out = []
    for name in (c for c in shares.columns if c not in (TRUTH, RANDOM)):
        data = shares[[name, RANDOM, TRUTH]].dropna()
        n = len(data)
        draws = rng.integers(0, n, size=(n_bootstrap, n)) if n else np.zeros((0, 0), int)
        row = {"method": name, "n_subjects": n, "n_undefined": undefined,
               "region_percent": float(subject_means.loc[data.index, "percent"].mean()) if n else np.nan,
               "disease_effect": float(subject_means.loc[data.index, "effect"].mean()) if n else np.nan}
        columns = {"share": data[name], "random_share": data[RANDOM], "truth_share": data[TRUTH],
                   "share_vs_random": data[name] - data[RANDOM]}
        for key, series in columns.items():
            values = series.to_numpy()
            row[key] = float(values.mean()) if n else np.nan
            _, low, high = basic_interval(row[key], values[draws].mean(axis=1), bounds=(-np.inf, np.inf))
            row[f"{key}_ci_low"], row[f"{key}_ci_high"] = float(low), float(high)
        row["above_random"] = bool(row["share_vs_random_ci_low"] > 0)
        out.append(row)
    return pd.DataFrame(out)


def twin_inputs(config: RunConfig, scans: tuple[Scan, ...]) -> dict[str, T1wInput]:
    """The raw twin of each scan that has one in the input dataset, by scan key."""
    root = simulation_root(config.bids_dir)
    found = {}
    for scan in scans:
        path = simulation_twin(root, scan)
        if path.is_file():
            found[scan.key] = T1wInput(scan.subject, scan.session, path)
    return found


def twin_config(config: RunConfig, derivs: Derivatives, scan: Scan) -> RunConfig | None:
    """The run configuration that preprocesses ``scan``'s twin as the scan was: the settings its sidecar records
    (the run's where it records none), into :func:`~adheat_app.layout.twins_root`; None for scans reused from
    fMRIPrep (``--anat-derivatives``: no twin can be made as they were)."""
    recorded = read_json(sidecar_path(scan.image))
    if recorded.get("AnatDerivatives"):
        return None
    pre, ex = config.preprocessing, config.execution
    config = config.replace("preprocessing", registration=recorded.get("RegistrationMethod", pre.registration),
                            skull_strip=recorded.get("SkullStripMode", pre.skull_strip),
                            intensity_norm=recorded.get("IntensityNormalization", pre.intensity_norm),
                            anat_derivatives=None)
    config = config.replace("execution", seed=recorded.get("Seed", ex.seed), work_dir=str(config.work_dir / "twins"))
    return dataclasses.replace(config, output_dir=twins_root(derivs.root))


def preprocess_twins(config: RunConfig, derivs: Derivatives, cohort: Cohort, template: Template
                     ) -> dict[str, Scan]:
    """Preprocess the twin of every scan that has one, as the scan was; the preprocessed twins by scan key.

    Runs the participant level's pool (:func:`~adheat_app.preprocess.workflow.run_preprocessing`) into
    :func:`~adheat_app.layout.twins_root` (its crash files and QC table there too); twins done with the same
    input and settings are skipped, and twins that fail are left out.
    """
    from adheat_app.preprocess.workflow import run_preprocessing

    inputs = twin_inputs(config, cohort.scans)
    jobs: dict[RunConfig, list[T1wInput]] = {}
    for scan in cohort.scans:
        settings = twin_config(config, derivs, scan) if scan.key in inputs else None
        if settings is not None:
            jobs.setdefault(settings, []).append(inputs[scan.key])
    root = twins_root(derivs.root)
    twins = Derivatives(root, config.bids_dir)
    if jobs:
        twins.initialize()
    done = {}
    for settings, todo in jobs.items():
        LOGGER.info("twin test: %d twin(s), preprocessed as their scans (%s registration)", len(todo),
                    settings.preprocessing.registration)
        failed = set(run_preprocessing(settings, todo, twins, template))
        for t in todo:
            image, mask = preproc_paths(root, t, cohort.space, cohort.res_label)
            logjacobian = logjacobian_path(root, t, cohort.space, cohort.res_label)
            if t.key not in failed and image.is_file():
                done[t.key] = Scan(t.subject, t.session, image, mask, None, None,
                                   logjacobian if logjacobian.is_file() else None)
    return done


def grey_matter(template: Template) -> np.ndarray:
    """Where the template's grey-matter probability is at least 0.5 (inside its brain mask), on its grid."""
    mask = template.mask_array()
    grey = np.zeros(mask.shape, bool)
    grey[mask] = grey_matter_prior(template)[0] >= 0.5
    return grey


def scan_rows(models: FoldModels, a: Assignment, twin: torch.Tensor, truth_path: Path, maps: dict[str, Path],
              grey: np.ndarray, seed: int) -> list[dict]:
    """One scan's share per region (its true region, the mean of its random regions, each map's top region) as
    :func:`share_table` rows; none when its true region is empty inside its brain mask.

    ``twin``: the twin's input ``(C, X, Y, Z)`` on the models' device; ``maps``: the scan's heatmap files by name.
    """
    brain = np.asarray(nib.load(a.scan.mask).dataobj) > 0
    truth = (np.asarray(nib.load(truth_path).dataobj) > THRESHOLD) & brain
    size = int(truth.sum())
    if not size:
        return []
    regions = {TRUTH: [truth], RANDOM: random_regions(grey & brain, size, RANDOM_DRAWS,
                                                      np.random.default_rng((seed, a.index))),
               **{name: [top_region(np.asarray(nib.load(path).dataobj, np.float32), brain, size)]
                  for name, path in maps.items()}}
    effect, shares = region_shares(models.models[a.fold], models.tensor([a.index])[0], twin,
                                   [region for parts in regions.values() for region in parts], models.context)
    rows, start = [], 0
    for name, parts in regions.items():
        rows.append({"subject": a.scan.subject, "region": name, "effect": effect,
                     "share": float(np.mean(shares[start:start + len(parts)])), "percent": 100.0 * size / brain.sum()})
        start += len(parts)
    return rows


def run_twin_test(config: RunConfig, derivs: Derivatives, cohort: Cohort, template: Template
                  ) -> pd.DataFrame | None:
    """The twin test of every method's and control's maps; writes ``group/twin_test.tsv`` (module docstring).

    Returns None when ``--no-twin-test``, when the input dataset has no twin of a scan that a fold model held
    out, or when no map or model exists.
    """
    from adheat_app.attribution.catalog import selected_methods
    from adheat_app.attribution.runner import heatmap_run
    from adheat_app.evaluation.faithfulness import map_names

    if not config.evaluation.twin_test or not twin_inputs(config, cohort.scans):
        return None
    truths = {scan.key: simulation_subject_map(simulation_root(config.bids_dir), scan.subject, cohort.space,
                                               cohort.res_label, "probseg") for scan in cohort.scans}
    with_truth = tuple(scan for scan in cohort.scans if truths[scan.key].is_file())  # no truth: no twin needed
    twins = preprocess_twins(config, derivs, dataclasses.replace(cohort, scans=with_truth), template)
    seed = config.execution.seed
    with heatmap_run(config, derivs, cohort) as run:
        if run is None:
            return None
        models = run.fold_models
        tested = [a for a in models.assignments if a.fold is not None and a.scan.key in twins]
        names = map_names(selected_methods(config.heatmaps.methods),
                          lambda name: bool(tested) and run.writer.heatmap(tested[0], name).is_file())
        if not tested or not names:
            LOGGER.warning("twin test: no held-out scan with a preprocessed twin, a truth map on the %s %s grid "
                           "and heatmaps; not run", cohort.space, cohort.res_label)
            return None
        path = group_table(derivs.root, TWIN_TEST)
        files = [*models.files.values()]
        for a in tested:
            files += [*channel_paths(a.scan, models.channels), *channel_paths(twins[a.scan.key], models.channels),
                      truths[a.scan.key], *(p for n in names if (p := run.writer.heatmap(a, n)).is_file())]
        recorded = {"InputsHash": cache_key(files), "Seed": seed, "NBootstrap": config.evaluation.n_bootstrap,
                    "RandomDraws": RANDOM_DRAWS, "MinEffect": MIN_EFFECT}
        if not config.execution.overwrite and is_complete(path, **recorded):
            LOGGER.info("twin test: %s is up to date", path.name)
            return pd.read_csv(path, sep="\t")
        twin_volumes = load_inputs([twins[a.scan.key] for a in tested], models.channels, config.work_dir)
        grey = grey_matter(template)
        rows = []
        for i, a in enumerate(tested):
            twin = torch.from_numpy(np.asarray(twin_volumes[i], np.float32)).to(models.device)
            maps = {n: p for n in names if (p := run.writer.heatmap(a, n)).is_file()}
            rows += scan_rows(models, a, twin, truths[a.scan.key], maps, grey, seed)
        if not rows:
            return None
        table = share_table(pd.DataFrame(rows), config.evaluation.n_bootstrap, seed)
        with derivs.lock():
            write_table(path, table, {
                "Description": "twin test: share of the disease's effect on the model (log-odds of the positive "
                               "class, scan minus its simulated twin without atrophy) recovered by putting the "
                               "twin's voxels into each map's top region of the scan, against random grey-matter "
                               "regions and the subject's true atrophied region, all of the true "
                               "region's volume; fold model that held the subject out; mean over subjects",
                "Output": "log-odds of the positive class (z_positive - z_negative)",
                "TruthThreshold": THRESHOLD, "RandomRegions": "the n grey-matter voxels (template probability "
                                                               ">= 0.5) nearest to a random grey-matter voxel",
                "Interval": f"{LEVEL:.0%} basic bootstrap over subjects", "NScans": len(tested),
                "TwinsFolder": derivs.source_uri(twins_root(derivs.root)), **recorded})
        return table
