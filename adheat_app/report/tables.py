"""The group tables as the reports read them: absent files, missing columns and the pooled model verdicts.

Reports render whatever subset of the group level ran, and tables gain columns
as the project grows (``answer.tsv``'s ``control``, ``primary`` and
``p_holm``), so every reader here returns None or leaves a value out instead of
failing on an absent file or column.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from adheat_app.layout import CV_METRICS, group_table


def read_tsv(path: Path) -> pd.DataFrame | None:
    """A TSV table, or None when the file is absent."""
    if not path.is_file():
        return None
    return pd.read_csv(path, sep="\t", dtype={"subject": str, "session": str, "fold": str}, na_values=["n/a"])


def read_group_table(root: Path, table: str) -> pd.DataFrame | None:
    """The group table ``table`` (:func:`adheat_app.layout.group_table`) of the output dataset ``root``, or None."""
    return read_tsv(group_table(root, table))


def table_link(root: Path, table: str) -> str:
    """The path of a group table relative to the reports in ``root`` (a link target)."""
    return group_table(root, table).relative_to(root).as_posix()


def truthy(value: object) -> bool | None:
    """A boolean cell of a TSV (``True``/``true``/``1``/``yes``); None when empty."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or str(value).strip() == "":
        return None
    return str(value).strip().lower() in ("true", "1", "1.0", "yes")


def interval(value: float, low: float, high: float) -> str:
    """``value [low, high]`` to three decimals (the value alone when the interval is missing)."""
    text = f"{value:.3f}"
    return text if math.isnan(low) or math.isnan(high) else f"{text} [{low:.3f}, {high:.3f}]"


def model_verdicts(root: Path) -> dict[str, dict]:
    """Per model of ``cv_metrics.tsv``: is it better than chance (pooled row), with its ROC AUC and p-value.

    Reads the pooled row (``fold`` starting with ``pool``; else any row with a
    ``better_than_chance`` value). Models without such a row, or a table
    without the column, are left out.
    """
    metrics = read_group_table(root, CV_METRICS)
    if metrics is None or "better_than_chance" not in metrics.columns or "model" not in metrics.columns:
        return {}
    verdicts = {}
    for model, rows in metrics.groupby("model"):
        rows = rows[rows["better_than_chance"].notna()]
        pooled = rows[rows["fold"].astype(str).str.lower().str.startswith("pool")] if "fold" in rows else rows
        row = (pooled if len(pooled) else rows).head(1)
        if row.empty:
            continue
        row = row.iloc[0]
        verdicts[str(model)] = {"better": truthy(row["better_than_chance"]),
                                "below": truthy(row["below_chance"]) if "below_chance" in row else None,
                                **{key: float(row[key]) if key in row and pd.notna(row[key]) else float("nan")
                                   for key in ("roc_auc", "roc_auc_ci_low", "roc_auc_ci_high", "p_value")}}
    return verdicts


def verdict_details(verdict: dict) -> str:
    """``(ROC AUC a [low, high], p = q)`` of a model verdict (empty when the table has neither)."""
    details = []
    if not math.isnan(verdict["roc_auc"]):
        details.append("ROC AUC " + interval(verdict["roc_auc"], verdict["roc_auc_ci_low"], verdict["roc_auc_ci_high"]))
    if not math.isnan(verdict["p_value"]):
        details.append(f"p = {verdict['p_value']:.3g}")
    return f" ({', '.join(details)})" if details else ""
