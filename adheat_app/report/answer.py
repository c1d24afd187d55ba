"""The answer that opens ``group.html``: one sentence per question and one figure.

The questions, each answered from the group tables that exist (a question
whose table is absent is said to be not assessed, except faithfulness, which
is left out when no faithfulness table exists):

``learned``
    Did the CNN learn? Its pooled out-of-fold ROC AUC and interval against
    chance 0.5 (``cv_metrics.tsv``), with the linear SVM on the same folds as
    the trivial competitor. ``id="model-warning"`` when it did not.
``confound``
    Could a confound explain it? The covariate-only classifiers of
    ``cv_metrics.tsv`` (``covariate-<column>``). ``id="confound-warning"``
    when one of them separates the classes.
``findings``
    Which methods find which reference? ``answer.tsv`` (absolute maps, all
    scans), per reference in headline order (:func:`~adheat_app.evaluation.references.headline_order`): the methods whose ROC AUC
    lies above chance and above the control the table names (its ``control``
    column, else ``InputMagnitude``); only the ``primary`` rows where the
    table marks them (Holm-corrected where it gives ``p_holm``), else every
    map but the per-channel parts of a several-channel map.
``faithful``
    Are the maps faithful? Only where ``faithfulness.tsv`` or
    ``channel_ablation.tsv`` exist.

The figure (:func:`answer_figure`): per map, the group mean map over all
scans, its top-k % of brain voxels (k: the overlap scores' threshold,
:data:`adheat_app.evaluation.overlap.TOP_PERCENT`, nearest to the size of the
headline reference) over the template with every reference's outline, side by
side, ordered by the ROC AUC against the headline reference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from adheat_app import plotting
from adheat_app.baseline.covariates import JOINT, covariate_claim, covariate_label, is_covariate_model
from adheat_app.config import RunConfig
from adheat_app.evaluation.overlap import TOP_PERCENT
from adheat_app.evaluation.reference import Reference
from adheat_app.evaluation.references._catalog import headline_order, kind_of
from adheat_app.layout import ANSWER, CHANNEL_ABLATION, FAITHFULNESS, TWIN_TEST, MapName
from adheat_app.report.html import esc, image, note
from adheat_app.report.tables import interval, model_verdicts, read_group_table, table_link, truthy, verdict_details
from adheat_app.templates import Template
from adheat_app.training.metrics import BELOW_CHANCE

#: The model name of the SVM's rows (its map is the activation pattern).
SVM = "SVM"
#: The control ``finds_reference`` is judged against when ``answer.tsv`` names none.
DEFAULT_CONTROL = "InputMagnitude"
#: Tables the faithfulness answer reads, under ``group/``.
FAITHFULNESS_TABLES = (FAITHFULNESS, CHANNEL_ABLATION, TWIN_TEST)
#: Boolean columns of a faithfulness table that say a method passes (the first present is read).
FAITHFUL_COLUMNS = ("faithful", "above_random", "better_than_random")


@dataclass(frozen=True)
class Findings:
    """The ``answer.tsv`` rows the answer reads: absolute maps; the primary rows where the table marks them, else
    every map but the channel parts of a several-channel map."""

    rows: pd.DataFrame
    primary_only: bool
    holm: bool

    @property
    def references(self) -> list[str]:
        """References present, in the reference kinds' headline order (others after them)."""
        order = {name: i for i, name in enumerate(headline_order())}
        return sorted(dict.fromkeys(self.rows["reference"]), key=lambda name: order.get(name, len(order)))

    @property
    def headline(self) -> str | None:
        """The first reference whose kind may be the headline (the first reference when none may)."""
        names = self.references
        eligible = (n for n in names if kind_of(n) is None or kind_of(n).headline is not None)
        return next(eligible, names[0] if names else None)

    def scores(self, reference: str) -> pd.Series:
        """Each method's value against ``reference``, highest first."""
        rows = self.rows[self.rows["reference"] == reference]
        return rows.set_index("method")["value"].astype(float).sort_values(ascending=False, kind="stable")


def read_findings(root: Path) -> Findings | None:
    """The rows of ``answer.tsv`` the answer reads (None when the table is absent or empty)."""
    answer = read_group_table(root, ANSWER)
    if answer is None or answer.empty:
        return None
    rows = answer[answer["sign"] == "absolute"] if "sign" in answer else answer
    primary_only = "primary" in rows and rows["primary"].map(truthy).any()
    if primary_only:
        rows = rows[rows["primary"].map(truthy).fillna(False).astype(bool)]
    else:  # a channel's part of a several-channel map stays in the table
        names = set(rows["method"])
        rows = rows[[MapName.parse(m).channel is None or MapName.parse(m).summed.desc not in names
                     for m in rows["method"]]]
    holm = "p_holm" in rows and rows["p_holm"].notna().any()
    rows = rows.drop_duplicates(["method", "reference"]).reset_index(drop=True)
    return Findings(rows, bool(primary_only), bool(holm))


def _item(question: str, text: str, warning_id: str = "") -> str:
    attributes = f' id="{warning_id}" class="warning"' if warning_id else ""
    return f"<li{attributes}><strong>{esc(question)}</strong> {text}</li>"


def _auc(verdict: dict) -> str:
    """``: pooled out-of-fold ROC AUC a [low, high] against chance 0.5 (p = q)`` (what the table has of it)."""
    text = "" if math.isnan(verdict["roc_auc"]) else (
        ": pooled out-of-fold ROC AUC "
        + interval(verdict["roc_auc"], verdict["roc_auc_ci_low"], verdict["roc_auc_ci_high"]) + " against chance 0.5")
    return text + ("" if math.isnan(verdict["p_value"]) else f" (p = {verdict['p_value']:.3g})")


def _learned(config: RunConfig, verdicts: dict[str, dict]) -> str:
    tr = config.training
    question = "Did the CNN learn?"
    cnn = verdicts.get(tr.model)
    classes = f"{esc(tr.positive_label)} from {esc(tr.negative_label)}"
    svm = verdicts.get(SVM)
    competitor = "" if svm is None or svm["better"] is None else (
        f" The linear SVM on the same folds: {'better' if svm['better'] else 'not better'} than chance"
        f"{esc(verdict_details(svm))}.")
    if cnn is None or cnn["better"] is None:
        return _item(question, f"Not assessed: group/cv_metrics.tsv has no pooled verdict of {esc(tr.model)} "
                               "(run the group level to train it)." + competitor)
    if cnn["better"]:
        return _item(question, f"Yes: {esc(tr.model)} separates {classes} better than chance{esc(_auc(cnn))}."
                     + competitor)
    below = f"; {esc(BELOW_CHANCE)}" if cnn.get("below") else ""
    return _item(question, f"No: {esc(tr.model)} is not better than chance at separating {classes}{esc(_auc(cnn))}"
                           f"{below}; its heatmaps say nothing about the disease." + competitor, "model-warning")


def _confound(config: RunConfig, verdicts: dict[str, dict]) -> str:
    tr = config.training
    question = "Could a confound explain it?"
    covariates = {m: v for m, v in verdicts.items() if is_covariate_model(m) and v["better"] is not None}
    if not covariates:
        asked = ", ".join(tr.covariates) or "none"
        return _item(question, f"Not assessed: no covariate-only classifier in group/cv_metrics.tsv (--covariates: "
                               f"{esc(asked)}; the columns must be in participants.tsv).")
    classes = f"{esc(tr.positive_label)} from {esc(tr.negative_label)}"
    confounds = [m for m, v in covariates.items() if v["better"]]
    if confounds:
        found = "; ".join(f"{esc(covariate_claim(m))} {classes}{esc(verdict_details(covariates[m]))}"
                          for m in confounds)
        return _item(question, f"Possibly: {found}. A model can reach its score by recognising "
                               f"{esc(' or '.join(map(covariate_label, confounds)))} instead of the disease, and its "
                               "heatmaps then show where those differ; balance the cohort on it, or compare with a "
                               "cohort where it does not predict the diagnosis.", "confound-warning")
    best = max(covariates, key=lambda name: -math.inf if math.isnan(covariates[name]["roc_auc"])
               else covariates[name]["roc_auc"])
    highest = ", ".join(filter(None, (covariate_label(best), verdict_details(covariates[best]).strip(" ()"))))
    alone = [covariate_label(m) for m in covariates if m != JOINT]
    return _item(question, f"Not by {esc(', '.join(alone))} alone{' or together' if JOINT in covariates else ''}: "
                           f"none separates {classes} better than chance (highest: {esc(highest)}).")


def _names(methods: list[str]) -> str:
    return ", ".join(methods) if methods else "none"


def _findings(config: RunConfig, findings: Findings | None, verdicts: dict[str, dict]) -> str:
    question = "Which methods find which reference?"
    if findings is None:
        return _item(question, "Not assessed: group/answer.tsv is absent (run the group level with heatmaps or the "
                               "SVM).")
    rows = findings.rows
    controls = sorted(set(rows["control"].dropna().astype(str))) if "control" in rows else []
    control = (f"the strongest applicable control ({', '.join(controls)})" if controls
               else f"the {DEFAULT_CONTROL} control")
    cnn = verdicts.get(config.training.model)
    untrained = cnn is not None and cnn["better"] is False
    sentences = []
    for reference in findings.references:
        scores = findings.scores(reference)
        here = rows[rows["reference"] == reference].set_index("method")
        finds = [m for m in scores.index if truthy(here.loc[m, "finds_reference"])
                 and not (untrained and m != SVM)]
        found = "; ".join(f"{m} ({interval(*here.loc[m, ['value', 'ci_low', 'ci_high']].astype(float))})"
                          for m in finds)
        others = [m for m in scores.index if m not in finds]
        caveat = kind.caveat if (kind := kind_of(reference)) is not None else ""
        label = f"{reference} ({caveat})" if caveat else reference
        sentences.append(f"<em>{esc(label)}</em>: found by {esc(found or 'no map')}"
                         + (f"; not by {esc(_names(others))}" if others else ""))
    metric = str(rows["metric"].iloc[0]) if "metric" in rows else "roc_auc"
    metric = {"roc_auc": "ROC AUC", "average_precision": "average precision"}.get(metric, metric)
    scope = " Primary comparisons only" + (", Holm-corrected" if findings.holm else "") + "." \
        if findings.primary_only else ""
    caveat = " The CNN did not learn, so its maps are not counted as finding anything." if untrained else ""
    return _item(question, "; ".join(sentences) + f". A map finds a reference when the 95 % interval of its "
                           f"{esc(metric)} (all scans, absolute map) lies above chance and its paired difference "
                           f"with {esc(control)} lies above 0.{esc(scope)}{esc(caveat)}")


def _faithful(root: Path) -> str:
    """The faithfulness sentence (empty when no faithfulness table exists)."""
    tables = {table_link(root, name): read_group_table(root, name) for name in FAITHFULNESS_TABLES}
    tables = {name: frame for name, frame in tables.items() if frame is not None and not frame.empty}
    if not tables:
        return ""
    parts = []
    for name, frame in tables.items():
        column = next((c for c in FAITHFUL_COLUMNS if c in frame.columns), None)
        key = next((c for c in ("method", "channel") if c in frame.columns), None)
        if column is None or key is None:
            parts.append(f"{name}: {len(frame)} rows (below)")
            continue
        verdict = frame.groupby(key)[column].agg(lambda values: all(truthy(v) for v in values))
        parts.append(f"{column.replace('_', ' ')} in {name}: {_names(list(verdict[verdict].index))}; not: "
                     f"{_names(list(verdict[~verdict].index))}")
    return _item("Are the maps faithful?", esc("; ".join(parts)) + ".")


def answer_sentences(config: RunConfig, root: Path, findings: Findings | None) -> str:
    """The list of one-sentence answers (``<ul id="answers">``) from the group tables of the outputs in ``root``."""
    verdicts = model_verdicts(root)
    items = [_learned(config, verdicts), _confound(config, verdicts), _findings(config, findings, verdicts),
             _faithful(root)]
    return '<ul id="answers">' + "".join(items) + "</ul>"


def display_percent(reference: np.ndarray, brain: np.ndarray) -> float:
    """The overlap scores' top-k % threshold nearest to the share of the brain the reference covers."""
    share = 100.0 * float(reference[brain].sum()) / max(1, int(brain.sum()))
    return min(TOP_PERCENT, key=lambda k: abs(k - share))


def _slices(reference: np.ndarray) -> list[int]:
    """Two axial slices through the reference (the 25th and 75th percentile of its voxels' z)."""
    z = np.argwhere(reference)[:, 2]
    return sorted({int(round(np.percentile(z, q))) for q in (25, 75)}) if z.size else []


def answer_figure(findings: Findings | None, maps: dict[str, Path], references: list[Reference],
                  template: Template) -> str:
    """The one figure: each map's top-k % over the template with the references' outlines, ordered by score.

    ``maps``: method -> its group mean map over all scans (the SVM: its activation pattern); methods of
    ``answer.tsv`` without a map file are left out.
    """
    if findings is None or findings.headline is None:
        return ""
    headline = findings.headline
    scores = findings.scores(headline)
    shown = [m for m in scores.index if m in maps and maps[m].is_file()]
    by_name = {ref.name: ref for ref in references}
    outlines = [(name, by_name[name].binary()) for name in findings.references
                if name in by_name and by_name[name].binary().any()]
    if not shown or headline not in by_name:
        return ""
    brain = template.mask_array()
    reference = by_name[headline].binary()
    percent = display_percent(reference, brain)
    volumes = {f"{m}\nROC AUC {scores[m]:.2f}": np.asarray(nib.load(maps[m]).dataobj, dtype=np.float32)
               for m in shown}
    png = plotting.top_percent_grid(volumes, brain, np.asarray(template.t1w.dataobj, dtype=np.float32), outlines,
                                    percent, _slices(reference))
    share = 100.0 * float(reference[brain].sum()) / max(1, int(brain.sum()))
    return ('<figure id="answer-figure">' + image(png, "top voxels of each map with the reference outlines")
            + "<figcaption>" + note(
                f"Where each map looks: the top {percent:g} % of brain voxels of its mean map over all scans "
                f"(absolute values; {percent:g} % is the overlap scores' threshold nearest the size of the "
                f"{headline} reference, {share:.1f} % of the brain), coloured by percentile, over the "
                f"{template.space} template; top row: maximum projection. Ordered by ROC AUC against {headline} "
                "(left: highest). Outlines: the reference maps.") + "</figcaption></figure>")
