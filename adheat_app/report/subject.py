"""``sub-<label>.html``: one subject's preprocessing, prediction and heatmaps on one self-contained page.

Sections (anchor ids): ``summary`` (diagnosis), ``viewer`` (log Jacobian and
heatmaps over the preprocessed T1w in an interactive viewer,
:mod:`adheat_app.report.viewer_layers`), ``preprocessing`` (per
session: the registration QC figure and the numbers of the preprocessed
T1w's sidecar), ``predictions`` (every model's out-of-fold probability and
fold) and ``heatmaps`` (per session: the subject's log-Jacobian map, then
every method's map, each a row of axial slices over the subject's preprocessed
T1w with its colour bar, and the heatmap sidecars' fold, probability and
target). Works from whatever files exist for the subject.
:func:`write_subject_reports` writes several subjects' pages in ``--nprocs``
processes.
"""

from __future__ import annotations

import logging
import multiprocessing
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from itertools import repeat
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from adheat_app import plotting
from adheat_app.bids import Derivatives, normalize_label, read_participants
from adheat_app.config import RunConfig
from adheat_app.errors import InputError
from adheat_app.io import read_json, write_text
from adheat_app.progress import tracked
from adheat_app.layout import (
    PREDICTIONS, MapName, find_heatmaps, find_preproc, logjacobian_path, scan_figures, sidecar_path,
)
from adheat_app.report.tables import read_group_table
from adheat_app.report.html import Section, esc, image, not_computed, note, page, svg_image, table
from adheat_app.report.viewer_layers import subject_viewer
from adheat_app.worker_logs import call_logged, parent_level, replay

LOGGER = logging.getLogger(__name__)

HEATMAP_KEYS = ("Method", "Fold", "TargetClass", "TrueLabel", "PredictedProbability", "Signed", "Model",
                "WallTimeSeconds")


def _scalars(sidecar: dict) -> pd.DataFrame:
    rows = [{"field": k, "value": v} for k, v in sorted(sidecar.items()) if isinstance(v, (str, int, float, bool))]
    return pd.DataFrame(rows, columns=["field", "value"])


@dataclass(frozen=True)
class Session:
    """One preprocessed session of a subject: its scan key, preprocessed T1w and grid."""

    subject: str
    session: str | None
    key: str
    path: Path
    space: str
    res: str


def _sessions(derivs: Derivatives, subject: str) -> list[Session]:
    """Every preprocessed session of a subject."""
    return [Session(subject, name.get("ses"), name.key, path, name.get("space"), name.get("res"))
            for path, name in find_preproc(derivs.root, subject)]


def _preprocessing(derivs: Derivatives, subject: str, sessions: list) -> str:
    if not sessions:
        return not_computed(f"no preprocessed T1w for sub-{subject}")
    parts = []
    for scan in sessions:
        parts.append(f"<h3>{esc(scan.key)}</h3>")
        qc = scan_figures(derivs.root, subject, scan.key)
        if qc:
            for figure in qc:
                parts.append(svg_image(figure.read_bytes(), figure.name) if figure.suffix == ".svg"
                             else image(figure.read_bytes(), figure.name))
        else:
            parts.append(not_computed("no registration QC figure"))
        side = sidecar_path(scan.path)
        parts.append(table(_scalars(read_json(side))) if side.is_file() else not_computed("no sidecar"))
    return "".join(parts)


def _predictions(derivs: Derivatives, subject: str) -> str:
    predictions = read_group_table(derivs.root, PREDICTIONS)
    if predictions is None:
        return not_computed("group/predictions.tsv is absent")
    rows = predictions[predictions["subject"] == subject]
    if rows.empty:
        return not_computed(f"sub-{subject} is in no cross-validation test fold (e.g. not AD or CN)")
    return note("Out-of-fold: each model predicted this subject from the fold that held it out.") + table(rows)


#: Row title of the subject's log-Jacobian map in the heatmap figure.
LOG_JACOBIAN = "log Jacobian"


def _heatmaps(derivs: Derivatives, sessions: list[Session]) -> str:
    parts = []
    for scan in sessions:
        maps = [(heatmap, name.get("desc")) for heatmap, name in find_heatmaps(derivs.root, scan.space, scan.res,
                                                                              scan.subject)
                if name.key == scan.key]
        methods = {method for _, method in maps}
        summed = [(heatmap, method) for heatmap, method in maps
                  if MapName.parse(method).channel is None or MapName.parse(method).summed.desc not in methods]
        logjacobian = logjacobian_path(derivs.root, scan, scan.space, scan.res)
        if not maps and not logjacobian.is_file():
            continue
        parts.append(f"<h3>{esc(scan.key)}</h3>")
        if len(summed) < len(maps):
            parts.append(note("Two-channel model: each map is the sum over the input channels; the map of each "
                              "channel is in the file desc-<Method><channel>_heatmap beside it."))
        volumes, rows = {}, []
        if logjacobian.is_file():
            volumes[LOG_JACOBIAN] = np.asarray(nib.load(logjacobian).dataobj, dtype=np.float32)
            parts.append(note("First row: the log Jacobian determinant of the registration beyond its affine part "
                              "(below 0, blue: less tissue than the template). Then each heatmap, |relevance| from "
                              f"{plotting.DISPLAY_THRESHOLD:g} of its 99.5th percentile up."))
        for heatmap, method in summed:
            volumes[method] = np.asarray(nib.load(heatmap).dataobj, dtype=np.float32)
            side = sidecar_path(heatmap)
            sidecar = read_json(side) if side.is_file() else {}
            rows.append({k: sidecar.get(k) for k in HEATMAP_KEYS} | {"Method": method})
        background = np.asarray(nib.load(scan.path).dataobj, dtype=np.float32)
        parts.append(image(plotting.quick_mosaic(volumes, background, signed={LOG_JACOBIAN}), f"{scan.key} heatmaps"))
        if rows:
            parts.append(table(pd.DataFrame(rows)))
    return "".join(parts) or not_computed("no heatmaps and no log-Jacobian map for this subject")


def _subject_page(config: RunConfig, derivs: Derivatives, subject: str) -> Path:
    """Write ``output_dir/sub-<label>.html`` from the subject's files that exist; return its path."""
    subject = normalize_label(subject, "sub")
    sessions = _sessions(derivs, subject)
    try:
        participants = read_participants(config.bids_dir, config.training.label_column)
        diagnosis = participants[config.training.label_column].get(subject)
    except InputError:
        diagnosis = None
    diagnosis = None if diagnosis is None or pd.isna(diagnosis) else str(diagnosis)
    summary = (f"<p>Subject <b>sub-{esc(subject)}</b>; diagnosis: <b>{esc(diagnosis or 'n/a')}</b>; "
               f"{len(sessions)} preprocessed session(s).</p>")
    sections = [
        Section("summary", "Subject", summary),
        # Interactive viewer (report/viewer_layers.py): one section, one call.
        Section("viewer", "Explore the maps", subject_viewer(derivs, subject)),
        Section("preprocessing", "Preprocessing", _preprocessing(derivs, subject, sessions)),
        Section("predictions", "Predictions", _predictions(derivs, subject)),
        Section("heatmaps", "Log Jacobian and heatmaps", _heatmaps(derivs, sessions)),
    ]
    return write_text(derivs.root / f"sub-{subject}.html", page(f"adheat report: sub-{subject}", sections))


def write_subject_report(config: RunConfig, derivs: Derivatives, subject: str) -> Path:
    """Write ``output_dir/sub-<label>.html`` from the subject's files that exist; return its path."""
    path = _subject_page(config, derivs, subject)
    LOGGER.info("wrote %s", path)
    return path


def write_subject_reports(config: RunConfig, derivs: Derivatives, subjects: Iterable[str]) -> list[Path]:
    """Write every subject's report, in up to ``--nprocs`` processes (one page takes 1-2 s of figures).

    The pages are the same as :func:`write_subject_report` writes one by one; the paths come back in subject order.
    What the workers log is written by this process's handlers (:mod:`adheat_app.worker_logs`).
    """
    subjects = sorted(set(subjects))
    workers = min(config.execution.nprocs, len(subjects))
    if workers <= 1:
        return [write_subject_report(config, derivs, subject) for subject in subjects]
    paths = []
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        pages = pool.map(call_logged, repeat(parent_level()), repeat(_subject_page), repeat(config), repeat(derivs),
                         subjects)
        for path, records in tracked(pages, "reports", "subject", total=len(subjects)):
            replay(records)
            LOGGER.info("wrote %s", path)
            paths.append(path)
    return paths
