"""``group.html``: the whole study on one self-contained page, the answer first.

Sections (anchor ids): ``answer`` (one sentence per question and one figure,
:mod:`adheat_app.report.answer`; every row of ``answer.tsv`` collapsed below),
``viewer`` (the maps in an interactive viewer,
:mod:`adheat_app.report.viewer_layers`), then ``summary`` (cohort), ``cv-metrics`` (CNN, SVM and covariate-only folds),
``roc``, ``training``, ``heatmaps`` (mean map per method and class at the
overlap scores' top-k % threshold with the references' outlines and a colour
bar), ``svm`` (activation pattern and weights), ``reference`` (the reference
maps scored against), ``overlap`` (table and curves; where subjects have truths
of their own, the subject-level scores collapsed below it), ``regions``,
``distances``, ``faithfulness`` (its tables and the curves' figure) and
``twin-test`` (only where their tables exist), ``sanity``, ``preproc-qc`` and
``methods`` (the text of ``logs/CITATION.md`` for the steps present). Each
section shows one line and keeps its long content in a collapsed block
linking its TSV file. Every section renders from the files that exist and
says "Not computed" for what is absent, so the page can be written after any
subset of the group level.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from adheat_app import plotting
from adheat_app.bids import Derivatives
from adheat_app.cohort import Cohort
from adheat_app.config import RunConfig
from adheat_app.errors import InputError
from adheat_app.evaluation.overlap import TOP_PERCENT
from adheat_app.evaluation.reference import Reference
from adheat_app.evaluation.scoring import REPEATS_COLUMN
from adheat_app.io import read_json, write_text
from adheat_app.layout import (
    ANSWER, CV_METRICS, DISTANCES, FAITHFULNESS_CURVES, OVERLAP, PREDICTIONS, PREPROC_QC, REGIONS, SANITY_CHECK,
    SUBJECT_OVERLAP, TWIN_TEST, MapName,
    faithfulness_figure, group_map_methods, group_map_path, group_table, overlap_figures, sidecar_path, to_label,
)
from adheat_app.report.answer import (FAITHFULNESS_TABLES, SVM, Findings, answer_figure, answer_sentences,
                                      display_percent, read_findings)
from adheat_app.report.html import Section, details, esc, image, markdown, not_computed, note, page, table
from adheat_app.report.tables import interval, read_group_table, table_link
from adheat_app.report.viewer_layers import group_viewer
from adheat_app.templates import Template

LOGGER = logging.getLogger(__name__)


def _references(config: RunConfig, derivs: Derivatives, cohort: Cohort, template: Template
                ) -> list[Reference] | str:
    """The reference maps scored against (computed ones only where they exist), or why they cannot be loaded."""
    from adheat_app.evaluation.references import Context
    from adheat_app.evaluation.references._catalog import all_references

    try:
        return all_references(Context(config, derivs, cohort, template, compute=False))
    except InputError as exc:
        return str(exc)


def _answer_maps(derivs: Derivatives, cohort: Cohort, template: Template) -> dict[str, Path]:
    """Each scored map's file over all scans: the methods' group means and the SVM's activation pattern."""
    from adheat_app.baseline.svm import output_paths

    maps = {m: group_map_path(derivs.root, template.space, template.res_label, m, "all")
            for m in group_map_methods(derivs.root, template.space, template.res_label)}
    maps[SVM] = output_paths(derivs, cohort)[0]
    return maps


def _answer(config: RunConfig, derivs: Derivatives, cohort: Cohort, template: Template, findings: Findings | None,
            references: list[Reference]) -> str:
    """One sentence per question, the figure, and every row of ``answer.tsv`` collapsed."""
    root = derivs.root
    parts = [answer_sentences(config, root, findings),
             answer_figure(findings, _answer_maps(derivs, cohort, template), references, template)]
    answer = read_group_table(root, ANSWER)
    if answer is not None and not answer.empty:
        parts.append(details(f"Every row of the answer table ({len(answer)} rows: methods x references x signs)",
                             table(answer), table_link(root, ANSWER)))
    return "".join(parts)


def _summary(cohort: Cohort, template: Template) -> str:
    counts = pd.Series([s.diagnosis or "n/a" for s in cohort.scans]).value_counts()
    subjects = len({s.subject for s in cohort.scans})
    return (f"<p>{len(cohort.scans)} scan(s) of {subjects} subject(s) ("
            + ", ".join(f"{esc(name)} {n}" for name, n in counts.items())
            + f"); positive class <b>{esc(cohort.positive_label)}</b>, negative class "
            f"<b>{esc(cohort.negative_label)}</b>. Analysis grid: {esc(template.space)} at {template.resolution:g} mm "
            f"({'x'.join(map(str, template.shape))}, template from {esc(template.source)}).</p>")


def _cv_metrics(root: Path) -> str:
    metrics = read_group_table(root, CV_METRICS)
    if metrics is None:
        return not_computed("group/cv_metrics.tsv is absent (run the group level to train the CNN, the SVM and "
                            "the covariate controls)")
    summary = metrics[metrics["fold"].isin(["mean", "sd"])]
    return (note(f"{metrics['model'].nunique()} model(s), {len(metrics)} rows: each fold, mean, SD and the pooled "
                 "out-of-fold verdict against chance.")
            + details("Mean and SD over folds, then every fold", "<h3>Mean and SD over folds</h3>" + table(summary)
                      + "<h3>Per fold</h3>" + table(metrics[~metrics["fold"].isin(["mean", "sd"])]),
                      table_link(root, CV_METRICS)))


def _roc(root: Path) -> str:
    predictions = read_group_table(root, PREDICTIONS)
    if predictions is None or predictions.empty:
        return not_computed("group/predictions.tsv is absent")
    counts = predictions.groupby("model").size().rename("scans").reset_index()
    return details("Pooled out-of-fold ROC curves of every model", image(plotting.roc_curves(predictions),
                                                                        "ROC curves") + table(counts),
                   table_link(root, PREDICTIONS))


def _training(config: RunConfig) -> str:
    folder = config.models_dir / config.training.model
    curves = sorted(folder.glob("fold-*/training_curve.png"))
    if not curves:
        return not_computed(f"no training curves under {folder}")
    return details(f"Training curves of {len(curves)} fold(s) of {config.training.model}", "".join(
        f"<h3>{esc(p.parent.name)}</h3>" + image(p.read_bytes(), f"training curve {p.parent.name}") for p in curves))


@dataclass(frozen=True)
class Scoring:
    """How the mean maps are drawn: the overlap scores' top-k % and the reference outlines (template grid)."""

    percent: float
    outlines: list[tuple[str, nib.Nifti1Image]]
    why: str

    def threshold(self, img: nib.Nifti1Image, template: Template) -> float:
        """The value of the map's top-k % of brain voxels (absolute values)."""
        return plotting.top_threshold(np.abs(np.asarray(img.dataobj, dtype=np.float32))[template.mask_array()],
                                      self.percent)


def _scoring(findings: Findings | None, references: list[Reference] | str, template: Template) -> Scoring:
    """The top-k % of the answer figure (nearest the headline reference's size) and every reference's outline."""
    refs = [] if isinstance(references, str) else references
    order = findings.references if findings is not None else []
    refs = sorted(refs, key=lambda ref: order.index(ref.name) if ref.name in order else len(order))
    outlines = [(ref.name, nib.Nifti1Image(ref.binary().astype(np.uint8), template.affine)) for ref in refs
                if ref.binary().any()]
    headline = next((ref for ref in refs if findings is not None and ref.name == findings.headline), None)
    if headline is None:
        percent = TOP_PERCENT[len(TOP_PERCENT) // 2]
        return Scoring(percent, outlines, f"top {percent:g} % of brain voxels")
    percent = display_percent(headline.binary(), template.mask_array())
    return Scoring(percent, outlines, f"top {percent:g} % of brain voxels, the overlap scores' threshold nearest the "
                                      f"size of the {headline.name} reference")


def _heatmaps(derivs: Derivatives, cohort: Cohort, template: Template, scoring: Scoring) -> str:
    methods = sorted((m for m in group_map_methods(derivs.root, template.space, template.res_label)
                      if not MapName.parse(m).is_control),
                     key=lambda m: (MapName.parse(m).summed.desc, MapName.parse(m).channel or ""))
    if not methods:
        return not_computed("no group mean heatmaps (no per-subject heatmaps, or evaluation not run)")
    parts = [note("Mean of per-subject absolute heatmaps, each normalised to unit total relevance inside the brain "
                  f"mask, drawn at the {scoring.why}; outlines: "
                  + (", ".join(name for name, _ in scoring.outlines) or "none")
                  + " (same colours as the answer figure). A model of several input channels: the sum over channels "
                  "per class, then each channel's map of all subjects.")]
    for method in methods:
        name = MapName.parse(method)
        base, channel = name.summed.desc, name.channel
        labels = ("all",) if channel is not None and base in methods else (
            "all", to_label(cohort.positive_label), to_label(cohort.negative_label))
        parts.append(f"<h3>{esc(method)}</h3>")
        for label in labels:
            path = group_map_path(derivs.root, template.space, template.res_label, method, label)
            if path.is_file():
                img = nib.load(path)
                parts.append(image(plotting.stat_mosaic(img, template.t1w, f"{method} mean, {label}",
                                                        threshold=scoring.threshold(img, template),
                                                        outlines=scoring.outlines), f"{method} {label} mosaic"))
    return note(f"{len(methods)} mean map(s) at the {scoring.why}, with the reference outlines and a colour bar.") \
        + details("Mean maps per method and class", "".join(parts))


def _svm(derivs: Derivatives, cohort: Cohort, template: Template, scoring: Scoring) -> str:
    from adheat_app.baseline.svm import output_paths

    pattern, weights = output_paths(derivs, cohort)
    if not pattern.is_file():
        return not_computed("the SVM baseline has not run (no desc-SVM_pattern map)")
    img = nib.load(pattern)
    threshold = scoring.threshold(img, template)
    parts = [note("Activation pattern cov(Z) w / var(w'z) (Haufe et al. 2014), mean over folds, at the "
                  f"{scoring.why} of |pattern|; negative values: lower values go with {cohort.positive_label}."),
             image(plotting.stat_mosaic(img, template.t1w, "SVM activation pattern", signed=True,
                                        threshold=threshold, outlines=scoring.outlines), "SVM pattern mosaic"),
             image(plotting.glass_brain(img, "SVM activation pattern", signed=True, threshold=threshold),
                   "SVM glass brain")]
    if weights.is_file():
        parts.append(image(plotting.stat_mosaic(nib.load(weights), template.t1w, "SVM weights (not a map of effects)",
                                               signed=True), "SVM weights mosaic"))
    return details("Activation pattern and weights of the linear SVM", "".join(parts))


def _reference(references: list[Reference] | str, template: Template) -> str:
    if isinstance(references, str):
        return not_computed(references)
    parts = []
    for ref in references:
        img = nib.Nifti1Image(ref.values.astype(np.float32), template.affine)
        parts.append(f"<h3>{esc(ref.name)}</h3><p>{esc(ref.description)}</p>"
                     + note(f"Source: {ref.source}; "
                            + ("reference voxels as described" if ref.mask is not None
                               else f"binarised above {ref.threshold:g}") + f": {int(ref.binary().sum())} voxels.")
                     + image(plotting.stat_mosaic(img, template.t1w, f"reference: {ref.name}"),
                             f"reference {ref.name}"))
    return details(f"{len(references)} reference map(s): {', '.join(ref.name for ref in references)}",
                   "".join(parts))


def _format_metric(row: pd.Series) -> str:
    return interval(row["value"], row["ci_low"], row["ci_high"])


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


def _repeats_note(overlap: pd.DataFrame) -> str:
    """The sentence on repeated cross-validation when ``overlap.tsv`` has its ``n_repeats`` column, else ""."""
    if REPEATS_COLUMN not in overlap.columns:
        return ""
    return (f" With {int(overlap[REPEATS_COLUMN].max())} repeats of the cross-validation, the maps of the trained "
            f"models (column {REPEATS_COLUMN}) score the mean over repeats, and each resample also draws one repeat, "
            "so their intervals hold the repeat-to-repeat variation of training.")


def _overlap(root: Path, cohort: Cohort) -> str:
    overlap = read_group_table(root, OVERLAP)
    if overlap is None or overlap.empty:
        return not_computed("group/overlap.tsv is absent")
    parts = [note("Value of the group mean map [95 % percentile bootstrap interval over subjects]; rows 'chance': "
                  "the value of a random map. Every map of a label is scored on the same resamples (paired "
                  "differences: group/overlap_differences.tsv). Controls: InputMagnitude (mean |input|), "
                  "GreyMatterPrior (grey-matter probability). The SVM pattern's interval recomputes the pattern on "
                  "each resample with the fold-mean weights fixed; Spearman has no interval. A resample's mean map "
                  "averages fewer distinct "
                  "subjects and is noisier than the full mean, so for metrics that reward sharp maps the interval "
                  "can lie below the value." + _repeats_note(overlap))]
    for label in ("all", to_label(cohort.positive_label)):
        wide = overlap_summary(overlap, label)
        if not wide.empty:
            parts.append(f"<h3>label: {esc(label)}</h3>" + table(wide))
    for path in overlap_figures(root):
        parts.append(image(path.read_bytes(), path.stem))
    return details(f"Overlap scores of every map, metric and top-k % ({len(overlap)} rows) and overlap curves",
                   "".join(parts), table_link(root, OVERLAP)) + _subject_overlap(root)


def _subject_overlap(root: Path) -> str:
    """The subject-level scores collapsed (each subject's own map against its own truth); empty without them."""
    scores = read_group_table(root, SUBJECT_OVERLAP)
    if scores is None or scores.empty:
        return ""
    parts = [note("Each subject's own out-of-fold map scored against that subject's own planted atrophy, then "
                  "the mean over subjects [95 % basic bootstrap interval, the subject resampled]; rows 'chance': "
                  "the mean of each truth's chance level. The group-map scores above score one mean map against "
                  "the cohort map; these ask whether single subjects' maps find their own atrophy. Last table: "
                  "ROC AUC minus the strongest control's, paired per subject.")]
    for label in scores["label"].unique():
        parts.append(f"<h3>label: {esc(label)}</h3>" + table(overlap_summary(scores, label)))
    auc = scores[(scores["metric"] == "roc_auc") & (scores["kind"] != "control")].copy()
    if not auc.empty:
        auc["vs_control"] = [interval(*values) for values in
                             auc[["vs_control", "vs_control_ci_low", "vs_control_ci_high"]].to_numpy(float)]
        parts.append("<h3>ROC AUC against the strongest control</h3>"
                     + table(auc[["label", "reference", "method", "sign", "control", "vs_control", "p_control",
                                  "n_subjects"]]))
    counts = ", ".join(f"{label} {n}" for label, n in scores.groupby("label", sort=False)["n_subjects"].max().items())
    return details(f"Subject-level scores: each subject's map against its own truth (subjects: {counts})",
                   "".join(parts), table_link(root, SUBJECT_OVERLAP))


def _regions(root: Path, cohort: Cohort) -> str:
    regions = read_group_table(root, REGIONS)
    if regions is None or regions.empty:
        return not_computed("group/regions.tsv is absent")
    top = regions[(regions["rank"] <= 10) & regions["label"].isin(["all", to_label(cohort.positive_label)])]
    return details("Ten AAL3 regions with the largest share of each method's mean relevance",
                   note("Enrichment = share of relevance / share of brain volume.") + table(top, max_rows=400),
                   table_link(root, REGIONS))


def _distances(root: Path) -> str:
    from adheat_app.evaluation.distances import distance_matrix

    distances = read_group_table(root, DISTANCES)
    if distances is None or distances.empty:
        return not_computed("group/distances.tsv is absent (needs at least two methods)")
    rows = distances[distances["label"] == "all"]
    if rows.empty:
        rows = distances[distances["label"] == distances["label"].iloc[0]]
    parts = [note("Between mean maps (label all): Euclidean distance of unit-norm maps, and 1 - Pearson r.")]
    for column in ("euclidean", "correlation_distance"):
        parts.append(image(plotting.matrix_heatmap(distance_matrix(rows, column), column.replace("_", " ")), column))
    return details("Distances between the methods' mean maps", "".join(parts) + table(distances),
                   table_link(root, DISTANCES))


def _faithfulness(root: Path) -> str:
    """The faithfulness tables that exist but the twin test's (its own section), collapsed, and the deletion and
    insertion curves' figure where their table exists (empty when none does)."""
    parts = []
    for name in (t for t in FAITHFULNESS_TABLES if t != TWIN_TEST):
        frame = read_group_table(root, name)
        if frame is not None and not frame.empty:
            parts.append(details(f"{name} ({len(frame)} rows)", table(frame), table_link(root, name)))
    return "".join(parts) + _faithfulness_curves(root)


def _faithfulness_curves(root: Path) -> str:
    """The curves' figure collapsed: ``group/figures/desc-curves_faithfulness.png``, drawn from
    ``faithfulness_curves.tsv`` when the file is absent (empty without the table)."""
    curves = read_group_table(root, FAITHFULNESS_CURVES)
    if curves is None or curves.empty:
        return ""
    side = sidecar_path(group_table(root, FAITHFULNESS_CURVES))
    fill = read_json(side).get("Fill", "not recorded") if side.is_file() else "not recorded"
    figure = faithfulness_figure(root)
    png = figure.read_bytes() if figure.is_file() else plotting.faithfulness_curves(curves, fill)
    description = plotting.faithfulness_description(fill)
    return details(f"Deletion and insertion curves (fill: {fill}; {curves['method'].nunique()} maps)",
                   note(description + ".") + image(png, description), table_link(root, FAITHFULNESS_CURVES))


def _twin_test(root: Path) -> str:
    """The twin test: one line per method (not its controls), the table collapsed (empty when it is absent)."""
    frame = read_group_table(root, TWIN_TEST)
    if frame is None or frame.empty:
        return ""
    methods = frame[[not MapName.parse(name).is_control for name in frame["method"]]]
    first = frame.iloc[0]

    def share(row: pd.Series, key: str) -> str:
        return interval(row[key], row[f"{key}_ci_low"], row[f"{key}_ci_high"])

    lines = "; ".join(f"{row['method']} {share(row, 'share')}" for _, row in methods.iterrows())
    summary = (f"Share of the disease's effect on the model (scan minus its simulated twin) recovered by each map's "
               f"top region of the true region's volume: {lines}. Random grey-matter regions: "
               f"{share(first, 'random_share')}; the true region itself: {share(first, 'truth_share')}; "
               f"{int(first['n_subjects'])} subjects ({int(first['n_undefined'])} with too small an effect left "
               "out)")
    return note(summary) + details(f"twin_test ({len(frame)} rows)", table(frame), table_link(root, TWIN_TEST))


def _sanity(root: Path) -> str:
    sanity = read_group_table(root, SANITY_CHECK)
    if sanity is None:
        return not_computed("group/sanity_check.tsv is absent (run with --sanity-check)")
    return details("Similarity of each method's maps to those of the model with re-initialised layers",
                   table(sanity), table_link(root, SANITY_CHECK))


def _preproc_qc(root: Path) -> str:
    qc = read_group_table(root, PREPROC_QC)
    if qc is None:
        return not_computed("group/preproc_qc.tsv is absent (preprocessing QC table)")
    flags = [c for c in qc.columns if "outlier" in c.lower()]
    summary = f"{len(qc)} scan(s)"
    if flags:
        flagged = qc[qc[flags[0]].astype(str).str.lower().isin(["1", "true", "yes"])]
        summary = f"{len(flagged)} of {len(qc)} scan(s) flagged as registration outliers"
    return details(summary, table(qc, max_rows=500), table_link(root, PREPROC_QC))


def _methods(config: RunConfig, derivs: Derivatives, template: Template) -> str:
    """The methods text of the steps whose outputs exist now (what ``logs/CITATION.md`` will hold)."""
    from adheat_app.citation import dataset_citation, provenance

    try:
        text, _ = dataset_citation(config, derivs)
    except FileNotFoundError as exc:
        return not_computed(str(exc))
    made = provenance(derivs, config.training.model)
    space = made.space or template.space
    source = made.template_source or template.source
    return details(f"Methods text for a paper (template: {space} from {source}; also in logs/CITATION.md, with "
                   "the BibTeX entries in logs/CITATION.bib)", markdown(text))


def write_group_report(config: RunConfig, derivs: Derivatives, cohort: Cohort, template: Template) -> Path:
    """Write ``output_dir/group.html`` from the group outputs that exist; return its path."""
    root = derivs.root
    findings = read_findings(root)
    references = _references(config, derivs, cohort, template)
    scoring = _scoring(findings, references, template)
    faithfulness, twin_test = _faithfulness(root), _twin_test(root)
    sections = [
        Section("answer", "The answer", _answer(config, derivs, cohort, template, findings,
                                                [] if isinstance(references, str) else references)),
        # Interactive viewer (report/viewer_layers.py): one section, one call.
        Section("viewer", "Explore the maps", group_viewer(config, derivs, cohort, template)),
        Section("summary", "Cohort", _summary(cohort, template)),
        Section("cv-metrics", "Cross-validated classification (CNN, SVM and covariate-only controls)",
                _cv_metrics(root)),
        Section("roc", "ROC curves", _roc(root)),
        Section("training", "Training curves", _training(config)),
        Section("heatmaps", "Mean heatmaps", _heatmaps(derivs, cohort, template, scoring)),
        Section("svm", "SVM activation pattern", _svm(derivs, cohort, template, scoring)),
        Section("reference", "Reference maps", _reference(references, template)),
        Section("overlap", "Overlap with the reference", _overlap(root, cohort)),
        Section("regions", "Relevance per region", _regions(root, cohort)),
        Section("distances", "Distances between methods", _distances(root)),
        *([Section("faithfulness", "Faithfulness", faithfulness)] if faithfulness else []),
        *([Section("twin-test", "Twin test (simulated scans without their atrophy)", twin_test)] if twin_test else []),
        Section("sanity", "Sanity checks (model randomisation)", _sanity(root)),
        Section("preproc-qc", "Preprocessing quality", _preproc_qc(root)),
        Section("methods", "Methods", _methods(config, derivs, template)),
    ]
    path = write_text(derivs.root / "group.html", page("adheat group report", sections))
    LOGGER.info("wrote %s", path)
    return path
