"""``group.html``: the whole study on one self-contained page.

Sections (anchor ids): ``answer`` first (does each method find each
reference, and is the model better than chance; a ``model-warning`` banner
when a model is not, a ``confound-warning`` banner when a covariate alone
predicts the diagnosis), then ``summary``, ``cv-metrics`` (CNN, SVM and
covariate-only folds),
``roc``, ``training``, ``heatmaps`` (mean map per method and class: slice
mosaics and glass brains over the template), ``svm`` (activation pattern and
weights), ``reference`` (the reference maps scored against), ``overlap``
(table and curves), ``regions``, ``distances``, ``sanity``, ``preproc-qc`` and
``methods`` (the text of ``logs/CITATION.md`` for the steps present). Every
section renders from the files that exist and says "Not computed" for what is
absent, so the page can be written after any subset of the group level.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from adheat_app import plotting
from adheat_app.baseline.covariates import PREFIX as COVARIATE_PREFIX, is_covariate_model
from adheat_app.bids import Derivatives
from adheat_app.cohort import Cohort
from adheat_app.config import RunConfig
from adheat_app.errors import InputError
from adheat_app.evaluation.reference import ANATOMICAL_PRIOR, HEADLINE_ORDER
from adheat_app.io import write_text
from adheat_app.layout import (
    ANSWER, CV_METRICS, DISTANCES, OVERLAP, PREDICTIONS, PREPROC_QC, REGIONS, SANITY_CHECK, MapName,
    group_map_methods, group_map_path, group_table, overlap_figures, to_label,
)
from adheat_app.report.html import Section, esc, image, markdown, not_computed, note, page, table
from adheat_app.templates import Template

LOGGER = logging.getLogger(__name__)


def read_tsv(path: Path) -> pd.DataFrame | None:
    """A TSV table, or None when the file is absent."""
    if not path.is_file():
        return None
    return pd.read_csv(path, sep="\t", dtype={"subject": str, "session": str, "fold": str}, na_values=["n/a"])


def _truthy(value: object) -> bool | None:
    """A boolean cell of a TSV (``True``/``true``/``1``/``yes``); None when empty."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return str(value).strip().lower() in ("true", "1", "1.0", "yes")


def model_verdicts(root: Path) -> dict[str, dict]:
    """Per model of ``cv_metrics.tsv``: is it better than chance (pooled row), with its ROC AUC and p-value.

    Reads the pooled row (``fold`` starting with ``pool``; else any row with a
    ``better_than_chance`` value). Models without such a row, or a table
    without the column, are left out.
    """
    metrics = read_tsv(group_table(root, CV_METRICS))
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
        verdicts[str(model)] = {"better": _truthy(row["better_than_chance"]),
                                **{key: float(row[key]) if key in row and pd.notna(row[key]) else float("nan")
                                   for key in ("roc_auc", "roc_auc_ci_low", "roc_auc_ci_high", "p_value")}}
    return verdicts


def _verdict_details(verdict: dict) -> str:
    """``(ROC AUC a [low, high], p = q)`` of a model verdict (empty when the table has neither)."""
    details = []
    if not math.isnan(verdict["roc_auc"]):
        details.append("ROC AUC " + _interval(verdict["roc_auc"], verdict["roc_auc_ci_low"], verdict["roc_auc_ci_high"]))
    if not math.isnan(verdict["p_value"]):
        details.append(f"p = {verdict['p_value']:.3g}")
    return f" ({', '.join(details)})" if details else ""


def _verdict_text(model: str, verdict: dict | None) -> str:
    if verdict is None or verdict["better"] is None:
        return f"{model}: not assessed"
    return f"{model}: {'better than chance' if verdict['better'] else 'NOT better than chance'}" + \
        _verdict_details(verdict)


def _interval(value: float, low: float, high: float) -> str:
    text = f"{value:.3f}"
    return text if math.isnan(low) or math.isnan(high) else f"{text} [{low:.3f}, {high:.3f}]"


def _confound_warning(config: RunConfig, verdicts: dict[str, dict]) -> str:
    """A ``confound-warning`` banner naming each covariate that alone predicts the diagnosis (empty if none)."""
    confounds = [m for m, verdict in verdicts.items() if is_covariate_model(m) and verdict["better"]]
    if not confounds:
        return ""
    cnn = verdicts.get(config.training.model)
    names = [m.removeprefix(COVARIATE_PREFIX) for m in confounds]
    return ('<div id="confound-warning" class="warning">' + "".join(
        f"<p><strong>{esc(name)} alone separates {esc(config.training.positive_label)} from "
        f"{esc(config.training.negative_label)}</strong>{esc(_verdict_details(verdicts[m]))}.</p>"
        for name, m in zip(names, confounds))
        + f"<p>A model can reach such scores by recognising {esc(' or '.join(names))} instead of the disease"
        + (f" (the CNN: {esc(_verdict_details(cnn).strip(' ()'))})" if cnn else "")
        + "; its heatmaps may then show where those differ. Balance the cohort on it, or compare with a cohort "
        "where it does not predict the diagnosis (rows covariate-&lt;column&gt; of the cross-validation table; "
        "--covariates).</p></div>")


def _answer(config: RunConfig, root: Path) -> str:
    """The answer first: model verdicts (with a warning banner) and, per method and reference, finds it or not."""
    verdicts = model_verdicts(root)
    parts = [_confound_warning(config, verdicts)]
    failing = [m for m, verdict in verdicts.items() if verdict["better"] is False and not is_covariate_model(m)]
    if failing:
        parts.append('<div id="model-warning" class="warning">' + "".join(
            f"<p><strong>{esc(m)} is not better than chance</strong> at separating "
            f"{esc(config.training.positive_label)} from {esc(config.training.negative_label)}"
            f"{esc(_verdict_details(verdicts[m]))}.</p>" for m in failing)
            + "<p>Heatmaps of a model that did not learn the task say nothing about the disease.</p></div>")
    answer = read_tsv(group_table(root, ANSWER))
    if answer is None or answer.empty:
        parts.append(not_computed("group/answer.tsv is absent (run the group level with heatmaps or the SVM)"))
        if verdicts:
            parts.append("<p>" + esc("; ".join(_verdict_text(m, v) for m, v in verdicts.items())) + "</p>")
        return "".join(parts)
    rows = answer[answer["sign"] == "absolute"].copy()
    order = {name: i for i, name in enumerate(HEADLINE_ORDER)}
    rows["order"] = rows["reference"].map(lambda name: order.get(name, len(order)))
    rows = rows.sort_values(["order", "method"], kind="stable")
    metric = str(rows["metric"].iloc[0]) if len(rows) else "roc_auc"
    shown = pd.DataFrame({
        "reference": [f"{r} (region prior, not a meta-analysis)" if r == ANATOMICAL_PRIOR else r
                      for r in rows["reference"]],
        "method": rows["method"],
        "finds it": ["yes" if _truthy(v) else "no" for v in rows["finds_reference"]],
        metric: [_interval(*v) for v in zip(rows["value"], rows["ci_low"], rows["ci_high"])],
        "chance": rows["chance"],
        "effect over chance": rows["effect_over_chance"],
        "minus InputMagnitude": [_interval(*v) for v in zip(rows["vs_input_magnitude"], rows["vs_ci_low"],
                                                              rows["vs_ci_high"])],
        "model": [_verdict_text(m, verdicts.get(m)) for m in
                  (("SVM" if method == "SVM" else config.training.model) for method in rows["method"])],
    })
    if "vs_random" in rows and rows["vs_random"].notna().any():
        shown.insert(7, "minus own map of a random model", [
            "n/a" if math.isnan(d) else _interval(d, low, high)
            for d, low, high in zip(rows["vs_random"], rows["vs_random_ci_low"], rows["vs_random_ci_high"])])
    parts.append(note(f"Label all (both classes), absolute maps. A map finds a reference when the 95 % bootstrap "
                      f"interval of its {metric} lies above the chance level and its paired difference with the "
                      "InputMagnitude control (mean |input| of the same scans) lies above 0. Positive parts of "
                      "signed maps: group/answer.tsv. The anatomicalprior reference is a region prior, scored but "
                      "not the headline. Where the sanity check ran (--sanity-check), each method is also compared "
                      "with its own maps of the model with every layer re-initialised (<Method>Random): a method "
                      "that scores as well on a random model is not explaining what the model learned."))
    parts.append(table(shown))
    return "".join(parts)


def _summary(cohort: Cohort, template: Template) -> str:
    counts = pd.Series([s.diagnosis or "n/a" for s in cohort.scans]).value_counts()
    rows = pd.DataFrame({"diagnosis": counts.index, "scans": counts.to_numpy()})
    subjects = len({s.subject for s in cohort.scans})
    return (f"<p>{len(cohort.scans)} scan(s) of {subjects} subject(s); positive class "
            f"<b>{esc(cohort.positive_label)}</b>, negative class <b>{esc(cohort.negative_label)}</b>. "
            f"Analysis grid: {esc(template.space)} at {template.resolution:g} mm "
            f"({'x'.join(map(str, template.shape))}, template from {esc(template.source)}).</p>" + table(rows))


def _cv_metrics(root: Path) -> str:
    metrics = read_tsv(group_table(root, CV_METRICS))
    if metrics is None:
        return not_computed("group/cv_metrics.tsv is absent (run the group level to train the CNN, the SVM and "
                            "the covariate controls)")
    summary = metrics[metrics["fold"].isin(["mean", "sd"])]
    return ("<h3>Mean and SD over folds</h3>" + table(summary) + "<h3>Per fold</h3>"
            + table(metrics[~metrics["fold"].isin(["mean", "sd"])]))


def _roc(root: Path) -> str:
    predictions = read_tsv(group_table(root, PREDICTIONS))
    if predictions is None or predictions.empty:
        return not_computed("group/predictions.tsv is absent")
    body = image(plotting.roc_curves(predictions), "ROC curves")
    counts = predictions.groupby("model").size().rename("scans").reset_index()
    return body + note("Pooled out-of-fold predictions of every model.") + table(counts)


def _training(config: RunConfig) -> str:
    folder = config.models_dir / config.training.model
    curves = sorted(folder.glob("fold-*/training_curve.png"))
    if not curves:
        return not_computed(f"no training curves under {folder}")
    return "".join(f"<h3>{esc(p.parent.name)}</h3>" + image(p.read_bytes(), f"training curve {p.parent.name}")
                   for p in curves)


def _heatmaps(derivs: Derivatives, cohort: Cohort, template: Template) -> str:
    methods = sorted(group_map_methods(derivs.root, template.space, template.res_label),
                     key=lambda m: (MapName.parse(m).summed.desc, MapName.parse(m).channel or ""))
    if not methods:
        return not_computed("no group mean heatmaps (no per-subject heatmaps, or evaluation not run)")
    parts = [note("Mean of per-subject absolute heatmaps, each normalised to unit total relevance inside the brain "
                  "mask (maps are scaled to their 99.5th percentile). A model of several input channels: the "
                  "sum over channels per class, then each channel's map of all subjects.")]
    for method in methods:
        name = MapName.parse(method)
        base, channel = name.summed.desc, name.channel
        if channel is not None and base in methods:  # one glass brain per channel, below the summed map
            path = group_map_path(derivs.root, template.space, template.res_label, method, "all")
            parts.append(image(plotting.glass_brain(nib.load(path), f"{base}, {channel} channel, mean, all"),
                               f"{method} glass brain"))
            continue
        parts.append(f"<h3>{esc(method)}</h3>")
        for label in (to_label(cohort.positive_label), to_label(cohort.negative_label)):
            path = group_map_path(derivs.root, template.space, template.res_label, method, label)
            if path.is_file():
                parts.append(image(plotting.stat_mosaic(nib.load(path), template.t1w, f"{method} mean, {label}"),
                                   f"{method} {label} mosaic"))
        path = group_map_path(derivs.root, template.space, template.res_label, method, "all")
        parts.append(image(plotting.glass_brain(nib.load(path), f"{method} mean, all"), f"{method} glass brain"))
    return "".join(parts)


def _svm(derivs: Derivatives, cohort: Cohort, template: Template) -> str:
    from adheat_app.baseline.svm import output_paths

    pattern, weights = output_paths(derivs, cohort)
    if not pattern.is_file():
        return not_computed("the SVM baseline has not run (no desc-SVM_pattern map)")
    parts = [note("Activation pattern cov(Z) w / var(w'z) (Haufe et al. 2014), mean over folds; negative values: "
                  f"lower intensity goes with {cohort.positive_label}."),
             image(plotting.stat_mosaic(nib.load(pattern), template.t1w, "SVM activation pattern", signed=True),
                   "SVM pattern mosaic"),
             image(plotting.glass_brain(nib.load(pattern), "SVM activation pattern", signed=True), "SVM glass brain")]
    if weights.is_file():
        parts.append(image(plotting.stat_mosaic(nib.load(weights), template.t1w, "SVM weights (not a map of effects)",
                                               signed=True), "SVM weights mosaic"))
    return "".join(parts)


def _reference(config: RunConfig, derivs: Derivatives, cohort: Cohort, template: Template) -> str:
    from adheat_app.evaluation.cohort_reference import cohort_reference
    from adheat_app.evaluation.meta_analysis import meta_reference
    from adheat_app.evaluation.reference import load_references

    try:
        references = load_references(config, template)
    except InputError as exc:
        return not_computed(str(exc))
    extra = (meta_reference(config, derivs, cohort, template, compute=False),
             *cohort_reference(config, derivs, cohort, template, compute=False))
    references += [ref for ref in extra if ref is not None]
    parts = []
    for ref in references:
        img = nib.Nifti1Image(ref.values.astype(np.float32), template.affine)
        parts.append(f"<h3>{esc(ref.name)}</h3><p>{esc(ref.description)}</p>"
                     + note(f"Source: {ref.source}; "
                            + ("reference voxels as described" if ref.mask is not None
                               else f"binarised above {ref.threshold:g}") + f": {int(ref.binary().sum())} voxels.")
                     + image(plotting.stat_mosaic(img, template.t1w, f"reference: {ref.name}"), f"reference {ref.name}"))
    return "".join(parts)


def _format_metric(row: pd.Series) -> str:
    return _interval(row["value"], row["ci_low"], row["ci_high"])


def overlap_summary(overlap: pd.DataFrame, label: str) -> pd.DataFrame:
    """Wide table (reference, method, sign) x metric of one label, values with their bootstrap interval.

    Each reference's first row, method ``chance``, holds the chance levels.
    """
    rows = overlap[(overlap["label"] == label) | (overlap["method"] == "SVM")].copy()
    if rows.empty:
        return rows
    chance = rows.drop_duplicates(["reference", "metric", "top_percent"]).copy()
    chance["method"], chance["sign"], chance["value"] = "chance", "", chance["chance"]
    chance["ci_low"] = chance["ci_high"] = float("nan")
    rows = pd.concat([chance, rows], ignore_index=True)
    rows["column"] = [m if pd.isna(k) else f"{m}@{k:g}%" for m, k in zip(rows["metric"], rows["top_percent"])]
    rows["text"] = rows.apply(_format_metric, axis=1)
    order = list(dict.fromkeys(rows["column"]))
    wide = rows.pivot_table(index=["reference", "method", "sign"], columns="column", values="text", aggfunc="first",
                            sort=False)
    wide = wide[order].reset_index()
    wide.columns.name = None
    return wide


def _overlap(root: Path, cohort: Cohort) -> str:
    overlap = read_tsv(group_table(root, OVERLAP))
    if overlap is None or overlap.empty:
        return not_computed("group/overlap.tsv is absent")
    parts = [note("Value of the group mean map [95 % percentile bootstrap interval over subjects]; rows 'chance': "
                  "the value of a random map. Every map of a label is scored on the same resamples (paired "
                  "differences: group/overlap_differences.tsv). Controls: InputMagnitude (mean |input|), "
                  "GreyMatterPrior (grey-matter probability). The SVM pattern's interval recomputes the pattern on "
                  "each resample with the fold-mean weights fixed; Spearman has no interval. A resample's mean map "
                  "averages fewer distinct "
                  "subjects and is noisier than the full mean, so for metrics that reward sharp maps the interval "
                  "can lie below the value.")]
    for label in ("all", to_label(cohort.positive_label)):
        wide = overlap_summary(overlap, label)
        if not wide.empty:
            parts.append(f"<h3>label: {esc(label)}</h3>" + table(wide))
    for path in overlap_figures(root):
        parts.append(image(path.read_bytes(), path.stem))
    return "".join(parts)


def _regions(root: Path, cohort: Cohort) -> str:
    regions = read_tsv(group_table(root, REGIONS))
    if regions is None or regions.empty:
        return not_computed("group/regions.tsv is absent")
    top = regions[(regions["rank"] <= 10) & regions["label"].isin(["all", to_label(cohort.positive_label)])]
    return (note("Ten regions (AAL3) with the largest share of each method's mean relevance; enrichment = share of "
                 "relevance / share of brain volume. Full table: group/regions.tsv.") + table(top, max_rows=400))


def _distances(root: Path) -> str:
    from adheat_app.evaluation.distances import distance_matrix

    distances = read_tsv(group_table(root, DISTANCES))
    if distances is None or distances.empty:
        return not_computed("group/distances.tsv is absent (needs at least two methods)")
    rows = distances[distances["label"] == "all"]
    if rows.empty:
        rows = distances[distances["label"] == distances["label"].iloc[0]]
    parts = [note("Between mean maps (label all): Euclidean distance of unit-norm maps, and 1 - Pearson r.")]
    for column in ("euclidean", "correlation_distance"):
        parts.append(image(plotting.matrix_heatmap(distance_matrix(rows, column), column.replace("_", " ")), column))
    return "".join(parts) + table(distances)


def _simple_table(path: Path, missing: str) -> str:
    frame = read_tsv(path)
    return not_computed(missing) if frame is None else table(frame)


def _preproc_qc(root: Path) -> str:
    qc = read_tsv(group_table(root, PREPROC_QC))
    if qc is None:
        return not_computed("group/preproc_qc.tsv is absent (preprocessing QC table)")
    flags = [c for c in qc.columns if "outlier" in c.lower()]
    summary = ""
    if flags:
        flagged = qc[qc[flags[0]].astype(str).str.lower().isin(["1", "true", "yes"])]
        summary = note(f"{len(flagged)} of {len(qc)} scan(s) flagged as registration outliers.")
    return summary + table(qc, max_rows=500)


def _methods(config: RunConfig, derivs: Derivatives) -> str:
    """The methods text of the steps whose outputs exist now (what ``logs/CITATION.md`` will hold)."""
    from adheat_app.citation import dataset_citation

    try:
        text, _ = dataset_citation(config, derivs)
    except FileNotFoundError as exc:
        return not_computed(str(exc))
    return markdown(text) + note("Also in logs/CITATION.md, with the BibTeX entries in logs/CITATION.bib.")


def write_group_report(config: RunConfig, derivs: Derivatives, cohort: Cohort, template: Template) -> Path:
    """Write ``output_dir/group.html`` from the group outputs that exist; return its path."""
    root = derivs.root
    sections = [
        Section("answer", "Answer: does a method find the reference?", _answer(config, root)),
        Section("summary", "Cohort", _summary(cohort, template)),
        Section("cv-metrics", "Cross-validated classification (CNN, SVM and covariate-only controls)",
                _cv_metrics(root)),
        Section("roc", "ROC curves", _roc(root)),
        Section("training", "Training curves", _training(config)),
        Section("heatmaps", "Mean heatmaps", _heatmaps(derivs, cohort, template)),
        Section("svm", "SVM activation pattern", _svm(derivs, cohort, template)),
        Section("reference", "Reference maps", _reference(config, derivs, cohort, template)),
        Section("overlap", "Overlap with the reference", _overlap(root, cohort)),
        Section("regions", "Relevance per region", _regions(root, cohort)),
        Section("distances", "Distances between methods", _distances(root)),
        Section("sanity", "Sanity checks (model randomisation)",
                _simple_table(group_table(root, SANITY_CHECK),
                              "group/sanity_check.tsv is absent (run with --sanity-check)")),
        Section("preproc-qc", "Preprocessing quality", _preproc_qc(root)),
        Section("methods", "Methods", _methods(config, derivs)),
    ]
    path = write_text(derivs.root / "group.html", page("adheat group report", sections))
    LOGGER.info("wrote %s", path)
    return path
