"""The answer to "does a method find the reference?": one row per map, reference and sign, primary rows corrected.

A map (a heatmap method's mean map, or the SVM pattern) *finds* a reference
only when all of these hold, on :data:`ANSWER_METRIC` and label ``all``:

1. its model is better than chance (the pooled verdict of
   ``group/cv_metrics.tsv``): a model that learned nothing finds nothing,
   whatever its maps overlap (``model_better_than_chance``);
2. its basic bootstrap interval lies above the chance level (``above_chance``);
3. its paired difference with the **strongest applicable control**
   (:func:`adheat_app.evaluation.controls.applicable_controls`; the one with
   the highest estimate on that reference) lies above 0 (``control``,
   ``vs_control``, its interval, ``above_control``, ``p_control``);
4. for *primary* rows: the comparison survives Holm's correction over the
   primary family (``p_holm`` < :data:`ALPHA`), where each row's p-value is
   the larger of ``p_control`` and ``p_spatial`` (an intersection-union test:
   it must beat both the control and the spatial null of
   :mod:`.spatial_null`), and the map scores above its spatial null's mean.

Primary rows (``primary`` true) are the questions the run answers: each
default method's channel-summed map, absolute value, against each scored
reference. The smallest bootstrap p-value is ``2 / (B + 1)`` for ``B``
resamples, so Holm over ``m`` primary rows needs ``B >= 40 m``
(:func:`holm_reachable`; the default 1000 serves up to 25 rows). Everything else (per-channel maps, the positive part of signed
maps, non-default methods, the SVM pattern) is secondary: reported with its
uncorrected intervals and ``p_holm`` empty.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from adheat_app.evaluation.controls import INPUT_MAGNITUDE, applicable_controls
from adheat_app.evaluation.intervals import holm
from adheat_app.layout import CV_METRICS, RANDOM_SUFFIX, MapName, group_table

#: Metric of the answer table (threshold-free; chance 0.5 whatever the reference's size).
ANSWER_METRIC = "roc_auc"
#: Family-wise error rate of the primary comparisons.
ALPHA = 0.05
ANSWER_COLUMNS = ["method", "reference", "sign", "metric", "value", "ci_low", "ci_high", "chance", "effect_over_chance",
                  "above_chance", "control", "vs_control", "vs_control_ci_low", "vs_control_ci_high", "above_control",
                  "p_control", "model_better_than_chance", "primary", "spatial_null_mean", "spatial_null_sd",
                  "p_spatial", "p_holm", "finds_reference", "vs_input_magnitude", "vs_ci_low", "vs_ci_high",
                  "vs_random", "vs_random_ci_low", "vs_random_ci_high", "above_random"]


def _paired(pairs: pd.DataFrame, method: str, sign: str, other: str, other_sign: str
            ) -> tuple[float, float, float, float]:
    """Difference ``method - other``, its interval and p-value from the rows of either order (NaN when not scored)."""
    forward = pairs[(pairs["method_a"] == method) & (pairs["sign_a"] == sign)
                    & (pairs["method_b"] == other) & (pairs["sign_b"] == other_sign)]
    if len(forward):
        diff, low, high, p = forward.iloc[0][["difference", "ci_low", "ci_high", "p_value"]]
        return float(diff), float(low), float(high), float(p)
    backward = pairs[(pairs["method_b"] == method) & (pairs["sign_b"] == sign)
                     & (pairs["method_a"] == other) & (pairs["sign_a"] == other_sign)]
    if len(backward):
        diff, low, high, p = backward.iloc[0][["difference", "ci_low", "ci_high", "p_value"]]
        return -float(diff), -float(high), -float(low), float(p)
    return np.nan, np.nan, np.nan, np.nan


def strongest_control(rows: pd.DataFrame, method: str) -> str | None:
    """The applicable control with the highest value among overlap ``rows`` of one label, reference and metric."""
    controls = rows[rows["kind"] == "control"]
    names = applicable_controls(method, controls["method"].unique())
    if not names:
        return None
    values = controls[controls["method"].isin(names)].groupby("method")["value"].max()
    return str(values.idxmax())


def model_verdicts(root: Path) -> dict[str, bool]:
    """Per model of the output dataset's ``group/cv_metrics.tsv``, its pooled verdict against chance ({} without)."""
    path = group_table(root, CV_METRICS)
    if not path.is_file():
        return {}
    table = pd.read_csv(path, sep="\t", dtype={"fold": str})
    pooled = table[table["fold"] == "pooled"]
    return {str(row.model): str(row.better_than_chance).lower() == "true" for row in pooled.itertuples(index=False)}


def primary_maps(methods) -> set[str]:
    """The maps of the primary comparisons among ``methods``: each default method's channel-summed map."""
    from adheat_app.attribution.catalog import default_methods

    return set(default_methods()) & set(methods)


def holm_reachable(n_bootstrap: int, n_primary: int) -> bool:
    """Whether the smallest bootstrap p-value, ``2 / (n_bootstrap + 1)``, can pass Holm's first step."""
    return n_primary == 0 or 2.0 / (n_bootstrap + 1) < ALPHA / n_primary


def answer_table(overlap: pd.DataFrame, differences: pd.DataFrame, label: str, verdicts: dict[str, bool | None],
                 primary: set[str], spatial: dict[tuple[str, str], tuple[float, float, float]] | None = None,
                 metric: str = ANSWER_METRIC) -> pd.DataFrame:
    """Per heatmap method / SVM pattern, reference and sign: does the map find the reference?

    Parameters
    ----------
    overlap, differences : pandas.DataFrame
        ``overlap.tsv`` and ``overlap_differences.tsv`` rows.
    label : str
        Group of scans (``all``: both classes).
    verdicts : dict
        Per map name, whether its model is better than chance (None: no verdict, taken as not better).
    primary : set of str
        Maps whose absolute rows are primary comparisons.
    spatial : dict, optional
        ``(method, reference)`` to the spatial null's mean, standard deviation and p-value (primary rows).
    metric : str
        Metric judged (a metric without top-k).

    Returns
    -------
    pandas.DataFrame
        :data:`ANSWER_COLUMNS` (see the module docstring). ``vs_input_magnitude`` and its interval
        (``vs_ci_low``, ``vs_ci_high``) and the difference with the method's own ``<Method>Random`` maps
        (``vs_random``...; ``above_random`` empty without them) are reported beside the strongest control.
    """
    spatial = spatial or {}
    scored = overlap[(overlap["label"] == label) & (overlap["metric"] == metric)]
    rows = scored[scored["kind"] != "control"]
    out = []
    for row in rows.itertuples(index=False):
        same = scored[scored["reference"] == row.reference]
        pairs = differences[(differences["label"] == label) & (differences["reference"] == row.reference)
                            & (differences["metric"] == metric)]
        control = strongest_control(same, row.method)
        versus = _paired(pairs, row.method, row.sign, control, "absolute") if control else (np.nan,) * 4
        magnitude = _paired(pairs, row.method, row.sign, INPUT_MAGNITUDE, "absolute")
        name = MapName.parse(row.method)
        random = _paired(pairs, row.method, row.sign, MapName(name.method, RANDOM_SUFFIX, name.channel).desc, row.sign)
        is_primary = row.sign == "absolute" and row.method in primary
        null_mean, null_sd, p_spatial = spatial.get((row.method, row.reference), (np.nan,) * 3)
        out.append({"method": row.method, "reference": row.reference, "sign": row.sign, "metric": metric,
                    "value": row.value, "ci_low": row.ci_low, "ci_high": row.ci_high, "chance": row.chance,
                    "effect_over_chance": row.value - row.chance, "above_chance": bool(row.ci_low > row.chance),
                    "control": control or "", "vs_control": versus[0], "vs_control_ci_low": versus[1],
                    "vs_control_ci_high": versus[2], "above_control": bool(versus[1] > 0), "p_control": versus[3],
                    "model_better_than_chance": bool(verdicts.get(row.method)), "primary": is_primary,
                    "spatial_null_mean": null_mean, "spatial_null_sd": null_sd, "p_spatial": p_spatial,
                    "vs_input_magnitude": magnitude[0], "vs_ci_low": magnitude[1], "vs_ci_high": magnitude[2],
                    "vs_random": random[0], "vs_random_ci_low": random[1], "vs_random_ci_high": random[2],
                    "above_random": "" if np.isnan(random[1]) else bool(random[1] > 0)})
    table = pd.DataFrame(out, columns=ANSWER_COLUMNS)
    if table.empty:
        return table
    first = table[["model_better_than_chance", "above_chance", "above_control"]].all(axis=1)
    main = table["primary"].to_numpy(bool)
    p_family = np.fmax(table["p_control"].to_numpy(float), np.nan_to_num(table["p_spatial"].to_numpy(float)))
    table["p_holm"] = np.where(main, holm(np.where(main, p_family, np.nan)), np.nan)
    above_null = ~(table["value"] <= table["spatial_null_mean"])  # no null computed: no condition
    table["finds_reference"] = first & (~main | ((table["p_holm"] < ALPHA) & above_null))
    return table
