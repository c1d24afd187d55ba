"""The analysed cohort: preprocessed scans in template space and their diagnoses.

Training, the SVM baseline, heatmaps and evaluation all start from a
:class:`Cohort`: one :class:`Scan` per subject and session with its
template-space T1w, its brain mask and its diagnosis from ``participants.tsv``,
and the input channels of ``--input`` (:data:`INPUTS`), resolved once for the
cohort when it is loaded (``auto``: both channels when every scan has a log
Jacobian map, else intensity; :func:`input_channels`).
Scans whose diagnosis is neither the positive nor the negative label (e.g. MCI)
stay in the cohort (they get heatmaps) but are not used for training.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from adheat_app.bids import Derivatives, T1wInput, read_participants
from adheat_app.config import RunConfig
from adheat_app.errors import InputError
from adheat_app.layout import CHANNELS, find_preproc, logjacobian_path, preproc_paths, scan_key

LOGGER = logging.getLogger(__name__)

INTENSITY, LOGJACOBIAN = CHANNELS
#: Channels of each ``--input`` choice, in channel order.
INPUTS: dict[str, tuple[str, ...]] = {"intensity": (INTENSITY,), "logjacobian": (LOGJACOBIAN,),
                                      "both": (INTENSITY, LOGJACOBIAN)}


@dataclass(frozen=True)
class Scan:
    """One preprocessed T1w scan.

    Attributes
    ----------
    subject, session : str, str or None
        BIDS labels (without prefixes).
    image, mask : Path
        Template-space preprocessed T1w and brain mask.
    logjacobian : Path or None
        Template-space log Jacobian determinant (written after SyN registration; None when absent).
    diagnosis : str or None
        Value of the label column in ``participants.tsv``.
    target : int or None
        1 for the positive label, 0 for the negative label, None otherwise.
    """

    subject: str
    session: str | None
    image: Path
    mask: Path
    diagnosis: str | None
    target: int | None
    logjacobian: Path | None = None

    @property
    def key(self) -> str:
        """``sub-01`` or ``sub-01_ses-02``."""
        return scan_key(self.subject, self.session)


@dataclass(frozen=True)
class Cohort:
    """All preprocessed scans of a run, on one template grid."""

    scans: tuple[Scan, ...]
    space: str
    res_label: str
    positive_label: str
    negative_label: str
    #: Input channels of ``--input`` (:func:`input_channels`), resolved once by :func:`load_cohort`; training, the
    #: SVM, the evaluation and the report read them here, and the model cards record them.
    channels: tuple[str, ...] = (INTENSITY,)

    @property
    def labelled(self) -> tuple[Scan, ...]:
        """Scans with a positive or negative diagnosis (used for training)."""
        return tuple(s for s in self.scans if s.target is not None)

    def targets(self, scans: tuple[Scan, ...] | None = None) -> np.ndarray:
        """Targets (0/1) of ``scans`` (default: the labelled scans)."""
        return np.array([s.target for s in (self.labelled if scans is None else scans)], dtype=np.int64)

    def groups(self, scans: tuple[Scan, ...] | None = None) -> np.ndarray:
        """Subject label of each scan: sessions of one subject share a group."""
        return np.array([s.subject for s in (self.labelled if scans is None else scans)])


def input_channels(kind: str, scans: tuple[Scan, ...]) -> tuple[str, ...]:
    """The channels of ``--input kind`` for ``scans``: ``auto`` is both channels when every scan has a log Jacobian
    map, else intensity."""
    if kind == "auto":
        kind = "both" if scans and all(scan.logjacobian is not None for scan in scans) else "intensity"
    return INPUTS[kind]


def _find_preproc(derivs: Derivatives, t1w: T1wInput) -> list[tuple[Path, str, str]]:
    """(image, space, res) of every preprocessed T1w of one input."""
    return [(path, name.get("space"), name.get("res")) for path, name in find_preproc(derivs.root, t1w.subject)
            if name.key == t1w.key]


def load_cohort(config: RunConfig, derivs: Derivatives, inputs: list[T1wInput]) -> Cohort:
    """Collect the preprocessed scans of ``inputs`` with their diagnoses.

    Raises
    ------
    InputError
        When no selected input has been preprocessed, when preprocessed images
        of different spaces or resolutions are mixed, or when the label column
        is missing. Inputs whose preprocessing failed or has not run yet are
        left out with a warning, so one broken scan does not block the group.
    """
    tr = config.training
    participants = read_participants(config.bids_dir, tr.label_column)
    found = {t.key: _find_preproc(derivs, t) for t in inputs}
    missing = [k for k, f in found.items() if not f]
    if len(missing) == len(found):
        raise InputError(f"no preprocessed T1w in {derivs.root} (e.g. for {missing[0]}); run the participant "
                         "level first")
    if missing:
        LOGGER.warning("%d scan(s) have no preprocessed T1w and are left out (rerun the participant level for "
                       "them): %s", len(missing), ", ".join(missing))
        inputs = [t for t in inputs if found[t.key]]
    grids = {(space, res) for t in inputs for _, space, res in found[t.key]}
    if len(grids) > 1:
        raise InputError(f"preprocessed images in {derivs.root} mix spaces/resolutions "
                         f"{sorted(grids)}; rerun the participant level with one --resolution "
                         "(--overwrite) or use a fresh output folder")
    space, res_label = grids.pop()
    scans = []
    for t in inputs:
        image, mask = preproc_paths(derivs.root, t, space, res_label)
        diagnosis = participants[tr.label_column].get(t.subject) if t.subject in participants.index else None
        diagnosis = None if diagnosis is None or (isinstance(diagnosis, float) and np.isnan(diagnosis)) \
            else str(diagnosis)
        target = {tr.positive_label: 1, tr.negative_label: 0}.get(diagnosis)
        logjacobian = logjacobian_path(derivs.root, t, space, res_label)
        scans.append(Scan(t.subject, t.session, image, mask, diagnosis, target,
                          logjacobian if logjacobian.is_file() else None))
    cohort = Cohort(tuple(scans), space, res_label, tr.positive_label, tr.negative_label,
                    input_channels(tr.input, tuple(scans)))
    others = sorted({s.diagnosis or "n/a" for s in scans if s.target is None})
    if others:
        LOGGER.info("%d scan(s) with diagnosis %s are not used for training (heatmaps only): %s",
                    len(scans) - len(cohort.labelled), "/".join(others),
                    ", ".join(s.key for s in scans if s.target is None))
    return cohort
