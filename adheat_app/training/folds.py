"""Subject-level cross-validation folds, their split files and the leakage guard.

A :class:`Fold` holds the training, validation (early stopping) and test scans
of one outer fold. :func:`make_folds` derives every fold from the seed and the
labelled scans of the whole cohort only, so training one fold alone
(``--fold K``) gives exactly the split of a full run. Folds are stratified by
diagnosis and grouped by subject: all sessions of a subject fall in one set,
which :func:`check_no_leakage` asserts before any model sees the data.

``--cv leave-site-out`` makes the sites of ``participants.tsv`` (column
:data:`SITE_COLUMN`) the folds: fold ``k`` tests the ``k``-th site (sorted by
name) and trains on the others (:func:`site_folds`, checked by
:func:`check_cv`). ``--repeats R`` repeats the cross-validation with new
splits and seeds: repeat ``r`` uses :func:`repeat_seed` (repeat 0 is the seed
itself, so one repeat is exactly the plain run). :func:`cohort_folds` gives
the folds of a run configuration and repeat.
"""

from __future__ import annotations

import hashlib
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from adheat_app.bids import read_participants
from adheat_app.cohort import Cohort, Scan
from adheat_app.config import RunConfig
from adheat_app.errors import InputError
from adheat_app.io import write_tsv
from adheat_app.layout import SPLIT, participants_table

SETS = ("train", "val", "test")
#: ``participants.tsv`` column whose values are the folds of ``--cv leave-site-out``.
SITE_COLUMN = "site"
#: Subjects of each class every fold's training part needs: the CNN's validation split and the SVM's inner
#: cross-validation each hold out one group of each class.
MIN_TRAINING_PER_CLASS = 2


@dataclass(frozen=True)
class Fold:
    """One outer cross-validation fold.

    Attributes
    ----------
    index : int
        0-based fold number.
    train, val, test : tuple of Scan
        Scans used for fitting, for validation (may be empty), and held out for testing.
    """

    index: int
    train: tuple[Scan, ...]
    val: tuple[Scan, ...]
    test: tuple[Scan, ...]

    def sets(self) -> dict[str, tuple[Scan, ...]]:
        """The three sets by name (``train``, ``val``, ``test``)."""
        return {"train": self.train, "val": self.val, "test": self.test}


def check_no_leakage(fold: Fold) -> None:
    """Raise RuntimeError when a subject appears in two of train/val/test (the leakage guard)."""
    subjects = {name: {s.subject for s in scans} for name, scans in fold.sets().items()}
    for i, first in enumerate(SETS):
        for second in SETS[i + 1:]:
            shared = subjects[first] & subjects[second]
            if shared:
                raise RuntimeError(f"data leakage in fold {fold.index}: subject(s) {', '.join(sorted(shared))} "
                                   f"in both {first} and {second}")


def _split(targets: np.ndarray, groups: np.ndarray, n_splits: int, seed: int):
    """Stratified, grouped splits (sklearn warns when a class has fewer scans than splits; harmless here)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        return list(splitter.split(np.zeros(len(targets)), targets, groups))


def make_folds(cohort: Cohort, n_folds: int, seed: int, val_fraction: float) -> list[Fold]:
    """Stratified folds grouped by subject, with a grouped validation split inside each.

    Parameters
    ----------
    cohort : Cohort
        Only its labelled scans are split (sorted by subject and session first,
        so the input order does not matter).
    n_folds : int
        Number of outer folds.
    seed : int
        Seeds the outer split; fold ``k``'s validation split uses ``seed + k``.
    val_fraction : float
        Fraction of each training fold's subjects held out for validation
        (the inner split uses ``round(1 / val_fraction)`` groups, but at most
        as many as the smaller class has subjects, so small cohorts hold out
        a larger fraction); 0 holds out none.

    Returns
    -------
    list of Fold
        ``n_folds`` folds, each checked by :func:`check_no_leakage`.

    Raises
    ------
    InputError
        When a fold's training part keeps fewer than :data:`MIN_TRAINING_PER_CLASS`
        subjects of a class.
    """
    scans = _sorted_labelled(cohort)
    targets, groups = cohort.targets(scans), cohort.groups(scans)
    return [_fold(k, scans, targets, groups, rest, test, seed, val_fraction, f"--folds {n_folds}")
            for k, (rest, test) in enumerate(_split(targets, groups, n_folds, seed))]


def _sorted_labelled(cohort: Cohort) -> tuple[Scan, ...]:
    return tuple(sorted(cohort.labelled, key=lambda s: (s.subject, s.session or "")))


def _fold(k: int, scans: tuple[Scan, ...], targets: np.ndarray, groups: np.ndarray, rest: np.ndarray,
          test: np.ndarray, seed: int, val_fraction: float, option: str) -> Fold:
    """Fold ``k`` from the indices of its training part and test set, with its grouped validation split."""
    per_class = min(len(set(groups[rest][targets[rest] == c])) for c in (0, 1))
    if per_class < MIN_TRAINING_PER_CLASS:  # uneven sessions can unbalance a split beyond check_labels' bound
        raise InputError(f"{option}: fold {k} leaves {per_class} subject(s) of a class for training, "
                         f"{MIN_TRAINING_PER_CLASS} are needed; use fewer folds or add subjects")
    if val_fraction > 0:
        n_inner = max(2, min(round(1 / val_fraction), per_class))
        train, val = _split(targets[rest], groups[rest], n_inner, seed + k)[0]
    else:
        train, val = np.arange(len(rest)), np.arange(0)
    fold = Fold(k, tuple(scans[rest[i]] for i in train), tuple(scans[rest[i]] for i in val),
                tuple(scans[i] for i in test))
    check_no_leakage(fold)
    return fold


def site_folds(cohort: Cohort, sites: dict[str, str], seed: int, val_fraction: float) -> list[Fold]:
    """Leave-site-out folds: fold ``k`` tests every labelled scan of the ``k``-th site (sites sorted by name).

    Parameters
    ----------
    cohort : Cohort
        Its labelled scans are split.
    sites : dict
        Site of each subject (:func:`subject_sites`).
    seed, val_fraction
        As for :func:`make_folds` (the validation split inside each training part).

    Raises
    ------
    InputError
        When a labelled subject has no site, fewer than 2 sites remain, or a site lacks a class.
    """
    scans = _sorted_labelled(cohort)
    targets, groups = cohort.targets(scans), cohort.groups(scans)
    check_sites({s.subject: sites.get(s.subject) for s in scans}, {s.subject: s.target for s in scans})
    site_of = np.array([sites[s.subject] for s in scans])
    return [_fold(k, scans, targets, groups, np.flatnonzero(site_of != site), np.flatnonzero(site_of == site),
                  seed, val_fraction, f"--cv leave-site-out (site {site})")
            for k, site in enumerate(sorted(set(site_of)))]


def subject_sites(bids_dir: Path) -> dict[str, str]:
    """Site of each subject of ``participants.tsv`` (column :data:`SITE_COLUMN`; subjects without one left out).

    Raises
    ------
    InputError
        When ``participants.tsv`` has no such column.
    """
    table = read_participants(bids_dir)
    if SITE_COLUMN not in table.columns:
        raise InputError(f"--cv leave-site-out: {participants_table(bids_dir)} has no {SITE_COLUMN!r} column "
                         f"(columns: {', '.join(table.columns)}); add one or use --cv kfold")
    return {subject: str(site) for subject, site in table[SITE_COLUMN].dropna().items()}


def check_sites(sites: dict[str, str | None], targets: dict[str, int]) -> list[str]:
    """The sites of the labelled subjects, sorted; refuse what leave-site-out cannot cross-validate.

    Parameters
    ----------
    sites : dict
        Site of each labelled subject (None: none given).
    targets : dict
        Target (0/1) of each labelled subject.

    Raises
    ------
    InputError
        Naming ``participants.tsv``: a subject without a site, fewer than 2 sites, or a site without a
        subject of each class (its test set could not be scored, or its training part would lack a class).
    """
    missing = sorted(subject for subject, site in sites.items() if site is None)
    if missing:
        raise InputError(f"--cv leave-site-out: participants.tsv gives no {SITE_COLUMN!r} for sub-{missing[0]}"
                         f"{f' and {len(missing) - 1} more' if len(missing) > 1 else ''}; fill the column")
    names = sorted(set(sites.values()))
    if len(names) < 2:
        raise InputError(f"--cv leave-site-out: participants.tsv names {len(names)} site(s) in column "
                         f"{SITE_COLUMN!r} among the labelled subjects, 2 are needed; use --cv kfold")
    for site in names:
        classes = {targets[subject] for subject, s in sites.items() if s == site}
        if classes != {0, 1}:
            raise InputError(f"--cv leave-site-out: site {site!r} of participants.tsv has subjects of one class only "
                             "(a site's test set needs both); use --cv kfold or select other subjects")
    return names


def check_cv(config: RunConfig) -> None:
    """Refuse ``--cv leave-site-out`` where ``participants.tsv`` cannot give its folds (before anything is written).

    Only subjects with the positive or negative label (and of ``--participant-label``, if given) count.
    """
    tr = config.training
    if tr.cv != "leave-site-out":
        return
    table = read_participants(config.bids_dir, tr.label_column)
    sites = subject_sites(config.bids_dir)
    labels = {tr.negative_label: 0, tr.positive_label: 1}
    wanted = {label.removeprefix("sub-") for label in config.execution.participant_label}
    targets = {subject: labels[diagnosis] for subject, diagnosis in table[tr.label_column].dropna().items()
               if diagnosis in labels and (not wanted or subject in wanted)}
    names = check_sites({subject: sites.get(subject) for subject in targets}, targets)
    if tr.fold is not None and tr.fold >= len(names):
        raise InputError(f"--fold {tr.fold}: --cv leave-site-out has {len(names)} folds (one per site of "
                         f"participants.tsv), numbered 0 to {len(names) - 1}")


def repeat_seed(seed: int, repeat: int) -> int:
    """The seed of repeat ``repeat`` of the cross-validation (repeat 0: ``seed`` itself)."""
    return seed if repeat == 0 else int(np.random.SeedSequence([seed, repeat]).generate_state(1)[0] % 2**31)


def cohort_folds(config: RunConfig, cohort: Cohort, repeat: int = 0) -> list[Fold]:
    """The folds of repeat ``repeat`` of a run (``--cv``, ``--folds``, ``--val-fraction``, the repeat's seed)."""
    tr = config.training
    seed = repeat_seed(config.execution.seed, repeat)
    if tr.cv == "leave-site-out":
        return site_folds(cohort, subject_sites(config.bids_dir), seed, tr.val_fraction)
    return make_folds(cohort, tr.folds, seed, tr.val_fraction)


def with_cv(config: RunConfig, cohort: Cohort) -> RunConfig:
    """``config`` with ``--folds`` set to the number of sites of the cohort for ``--cv leave-site-out``.

    Raises
    ------
    InputError
        When ``--fold`` names a fold past the last site.
    """
    if config.training.cv != "leave-site-out":
        return config
    sites = subject_sites(config.bids_dir)
    n_sites = len({sites.get(s.subject) for s in cohort.labelled} - {None}) or config.training.folds
    fold = config.training.fold
    if fold is not None and not 0 <= fold < n_sites:
        raise InputError(f"--fold {fold}: --cv leave-site-out makes one fold per site and participants.tsv names "
                         f"{n_sites} site(s) of labelled participants, so folds are numbered 0 to {n_sites - 1}")
    return config if n_sites == config.training.folds else config.replace("training", folds=n_sites)


def min_subjects_per_class(folds: int) -> int:
    """Fewest subjects of each class that cross-validation with ``folds`` folds can use.

    Every test set needs one subject of each class, and every fold's training
    part (all but the test set: at most ``ceil(n / folds)`` of a class's ``n``
    subjects) needs :data:`MIN_TRAINING_PER_CLASS` of each class, for the CNN's
    validation split and the SVM's inner cross-validation.
    """
    n = folds
    while n - math.ceil(n / folds) < MIN_TRAINING_PER_CLASS:
        n += 1
    return n


def check_labels(config: RunConfig, cohort: Cohort) -> None:
    """Reject cohorts that cannot be cross-validated, with a one-line fix.

    Raises
    ------
    InputError
        When ``participants.tsv`` has no subject with the positive or the
        negative label (listing the labels it has), when the selected scans
        hold one class only, or when a class has fewer subjects than
        ``--folds`` needs (:func:`min_subjects_per_class`).
    """
    tr = config.training
    path = participants_table(config.bids_dir)
    options = {tr.positive_label: "--positive-label", tr.negative_label: "--negative-label"}
    in_table = set(read_participants(config.bids_dir, tr.label_column)[tr.label_column].dropna())
    absent = [f"{option} {label!r}" for label, option in options.items() if label not in in_table]
    if absent:
        raise InputError(f"{path}: no subject has {' or '.join(absent)} in column {tr.label_column!r} "
                         f"(labels found: {', '.join(sorted(in_table)) or 'none'}); "
                         "set --positive-label/--negative-label")
    selected = {s.diagnosis for s in cohort.labelled}
    if len(selected) < 2:
        missing = next(label for label in options if label not in selected)
        raise InputError(f"no selected scan has {options[missing]} {missing!r} (one-class cohort); training "
                         "needs both classes: select subjects of both with --participant-label")
    if tr.cv == "leave-site-out":  # the sites set the folds: site_folds checks each training part
        return
    need = min_subjects_per_class(tr.folds)
    for label, target in ((tr.positive_label, 1), (tr.negative_label, 0)):
        n = len({s.subject for s in cohort.labelled if s.target == target})
        if n < need:
            usable = [k for k in range(2, n + 1) if min_subjects_per_class(k) <= n]
            fix = (f"use --folds {' or '.join(map(str, usable))}, or add subjects" if usable else
                   f"add subjects (at least {min_subjects_per_class(2)} per class, with --folds 2)")
            raise InputError(f"--folds {tr.folds}: only {n} {label} subject(s) selected from {path}, and "
                             f"{tr.folds} folds need at least {need} per class (one in each test set, "
                             f"{MIN_TRAINING_PER_CLASS} in each training part); {fix}")


def split_table(fold: Fold) -> pd.DataFrame:
    """The subjects of a fold as a table: subject, session, diagnosis, set."""
    rows = [{"subject": s.subject, "session": s.session, "diagnosis": s.diagnosis, "set": name}
            for name, scans in fold.sets().items() for s in scans]
    return pd.DataFrame(rows, columns=["subject", "session", "diagnosis", "set"])


def split_hash(fold: Fold) -> str:
    """Hash of a fold's split table (recorded in the model card; a changed cohort changes it)."""
    text = split_table(fold).to_csv(sep="\t", index=False, na_rep="n/a")
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def write_split(path: Path, fold: Fold) -> Path:
    """Write ``split.tsv`` of a fold atomically."""
    return write_tsv(path, split_table(fold))


def read_split(fold_dir: Path) -> pd.DataFrame:
    """``split.tsv`` of a fold folder: columns subject, session, diagnosis, set (train/val/test).

    Subject and session labels stay strings; a missing session reads as None.
    """
    table = pd.read_csv(Path(fold_dir) / SPLIT, sep="\t", dtype=str, na_values=["n/a"],
                        keep_default_na=False)
    return table.astype(object).where(table.notna(), None)
