"""Quality control of preprocessing: registration NCC, brain-mask Dice and ``group/preproc_qc.tsv``.

Two registration-quality numbers per scan. The normalised cross-correlation
(Pearson correlation) between the registered, bias-corrected T1w and the
template inside the template's brain mask measures how well the inside of the
brain lines up; it cannot see the brain's outline drifting out of that mask.
The Dice overlap of the registered brain mask with the template's brain mask
does (``docs/performance.md``: a registration restricted to the template mask
raised NCC and lowered this Dice), and it also shows a brain extraction that
cut off or kept too much. A scan is flagged as an outlier
when either number is below its floor (:data:`MIN_NCC`, :data:`MIN_DICE`) or
below the cohort median minus :data:`MAD_FACTOR` scaled median absolute
deviations (the scaled MAD taken as at least :data:`MIN_SPREAD`, so a cohort
of nearly equal scans does not flag differences of a few thousandths), or
when the deformation folds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from adheat_app.bids import Derivatives
from adheat_app.io import read_json, write_tsv
from adheat_app.layout import PREPROC_QC, SIDECAR, find_preproc, group_table

#: NCC below which a registration is always an outlier.
MIN_NCC = 0.5
#: Brain-mask Dice below which a registration is always an outlier.
MIN_DICE = 0.9
#: Scaled MADs below the median that make an outlier.
MAD_FACTOR = 3.0
#: Smallest scaled MAD used by :func:`flag_outliers`.
MIN_SPREAD = 0.01


def ncc(image: np.ndarray, template: np.ndarray, mask: np.ndarray) -> float:
    """Normalised cross-correlation of two arrays inside ``mask``."""
    a = image[mask].astype(np.float64)
    b = template[mask].astype(np.float64)
    a -= a.mean()
    b -= b.mean()
    denominator = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denominator) if denominator > 0 else 0.0


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap ``2 |a & b| / (|a| + |b|)`` of two boolean arrays (0 when both are empty)."""
    total = int(a.sum()) + int(b.sum())
    return 2.0 * int(np.logical_and(a, b).sum()) / total if total else 0.0


def flag_outliers(values: pd.Series, floor: float = MIN_NCC) -> pd.Series:
    """Outlier flag per value: below ``floor``, or below the median - :data:`MAD_FACTOR` scaled MADs.

    Parameters
    ----------
    values : pandas.Series
        One quality number per scan (higher is better); missing values are never flagged.
    floor : float
        Values below it are always outliers.
    """
    median = float(values.median())
    mad = max(1.4826 * float((values - median).abs().median()), MIN_SPREAD)
    return (values < floor) | (values < median - MAD_FACTOR * mad)


def write_qc_table(derivs: Derivatives) -> Path:
    """Collect the quality numbers of every preprocessed scan of the output dataset into ``group/preproc_qc.tsv``.

    Columns: subject, session, space, res, ncc, brain_dice (empty for outputs
    written before it was recorded), folded_percent (voxels of the template
    brain where the deformation folds: Jacobian determinant <= 0; empty
    without SyN), skull_stripped_input, registration, outlier (by NCC or brain
    Dice, :func:`flag_outliers`, or any folding).
    """
    with derivs.lock():  # concurrent participant runs each add their scans: the last one in sees them all
        return _write_qc_table(derivs)


def _write_qc_table(derivs: Derivatives) -> Path:
    """:func:`write_qc_table` without the lock."""
    rows = []
    for side, name in find_preproc(derivs.root, extension=SIDECAR):
        meta = read_json(side)
        if "RegistrationNCC" not in meta:
            continue
        rows.append({"subject": name.get("sub"), "session": name.get("ses"), "space": name.get("space"),
                     "res": name.get("res"), "ncc": round(float(meta["RegistrationNCC"]), 4),
                     "brain_dice": meta.get("BrainMaskDice"),
                     "folded_percent": (meta.get("JacobianDeterminant") or {}).get("FoldedPercent"),
                     "skull_stripped_input": meta.get("InputSkullStripped"),
                     "registration": (meta.get("Registration") or {}).get("Method")})
    table = pd.DataFrame(rows, columns=["subject", "session", "space", "res", "ncc", "brain_dice", "folded_percent",
                                        "skull_stripped_input", "registration"])
    folded = pd.to_numeric(table["folded_percent"], errors="coerce").fillna(0) > 0
    overlap = pd.to_numeric(table["brain_dice"], errors="coerce")
    table["outlier"] = (flag_outliers(table["ncc"]) | flag_outliers(overlap, MIN_DICE) | folded
                        ) if len(table) else pd.Series(dtype=bool)
    return write_tsv(group_table(derivs.root, PREPROC_QC), table)

