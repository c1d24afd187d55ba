"""``logs/CITATION.md`` and ``logs/CITATION.bib``: methods text for the steps actually run.

The templates live in the top-level ``boilerplate/`` folder (installed to
``share/adheat/boilerplate``). ``CITATION.md`` holds one section per step,
marked ``<!-- step: NAME -->``; a section is kept when the output dataset
contains that step's outputs, and its ``${placeholders}`` are filled from
what ran: the template (the ``space`` entity of the preprocessed scans and the
``Template`` record of their sidecars: TemplateFlow or nilearn's offline
copy), the preprocessing options and software versions of those sidecars, and
the training set-up and versions of the first fold's model card, and the
subject-level scores' sidecar where a simulated cohort has them, and the fill the
faithfulness table's sidecar records; the run
configuration fills in what no output records. Citations are written
``[@key]``; ``CITATION.bib`` receives exactly the entries the kept text cites.
"""

from __future__ import annotations

import dataclasses
import re
import string
import sys
from pathlib import Path

from adheat_app.attribution.references import BLUR_FWHM_MM
from adheat_app.bids import Derivatives, software_versions
from adheat_app.config import RunConfig, TrainingOptions
from adheat_app.evaluation.references._catalog import methods_text as reference_methods_text
from adheat_app.evaluation.imputation import NEIGHBOURS, NOISE
from adheat_app.evaluation.twin_test import MIN_EFFECT, RANDOM_DRAWS
from adheat_app.inputs import card_channels
from adheat_app.io import read_json, write_text
from adheat_app.layout import (
    FAITHFULNESS, MODEL_CARD, OVERLAP, SUBJECT_OVERLAP, TWIN_TEST, find_preproc, fold_dir, group_table, has_heatmaps,
    sidecar_path, trained_folds,
)
from adheat_app.preprocess.backends import BACKENDS
from adheat_app.templates import DEFAULT_SPACE

_SECTION_RE = re.compile(r"<!-- step: (?P<step>\w+) -->\n(?P<body>.*?)<!-- end -->\n?", re.S)
_BIB_RE = re.compile(r"^@\w+\{(?P<key>[^,]+),.*?^\}\n?", re.S | re.M)


def boilerplate_dir() -> Path:
    """The folder of citation templates (source checkout or installed copy)."""
    for candidate in (Path(__file__).resolve().parents[1] / "boilerplate",
                      Path(sys.prefix) / "share" / "adheat" / "boilerplate"):
        if (candidate / "CITATION.md").is_file():
            return candidate
    raise FileNotFoundError("adheat's boilerplate/ folder is missing from this installation")


def steps_present(derivs: Derivatives, model: str) -> set[str]:
    """The processing steps whose outputs exist in the derivatives dataset."""
    root = derivs.root
    steps = {"always"}
    if find_preproc(root):
        steps.add("preprocessing")
    if trained_folds(root / "models", model):
        steps.add("training")
    if has_heatmaps(root):
        steps.add("heatmaps")
    if group_table(root, OVERLAP).is_file():
        steps.add("evaluation")
    if group_table(root, TWIN_TEST).is_file():
        steps.add("twintest")
    if group_table(root, FAITHFULNESS).is_file():
        steps.add("faithfulness")
    return steps


def _training_text(tr: TrainingOptions) -> str:
    """One or two sentences on how each fold's network was trained."""
    optimiser = {"adamw": "AdamW", "adam": "Adam"}[tr.optimizer]
    length = (f"{tr.steps} optimiser steps (rounded up to whole epochs)" if tr.steps > 0 else f"{tr.epochs} epochs")
    schedule = ("a cosine learning-rate schedule with linear warm-up" if tr.schedule == "cosine"
                else "a constant learning rate")
    preset = "" if tr.preset == "adheat" else f" (the training set-up of `{tr.preset}`)"
    text = (f"Each network was trained{preset} for {'at most ' if tr.patience > 0 else ''}{length} with "
            f"{optimiser} ({'peak ' if tr.schedule == 'cosine' else ''}learning rate {tr.learning_rate:g}, "
            f"weight decay {tr.weight_decay:g}, batch size "
            f"{tr.batch_size}) and {schedule}")
    if tr.input_noise > 0:
        text += f", adding Gaussian noise (SD {tr.input_noise:g}) to the brain voxels of each training image"
    if tr.patience > 0:
        text += (f"; a subject-level validation split of each training fold served early stopping "
                 f"(patience {tr.patience} epochs)")
    return text + "."


def _cv_text(tr: TrainingOptions) -> str:
    """The cross-validation scheme in words (``--cv``, ``--folds``, ``--repeats``)."""
    text = ("leave-site-out cross-validation (each site of participants.tsv tested by models trained on the other "
            "sites)" if tr.cv == "leave-site-out" else
            f"{tr.folds}-fold cross-validation stratified by diagnosis and grouped by subject")
    return text + (f", repeated {tr.repeats} times with new fold splits and seeds" if tr.repeats > 1 else "")


def _validation_text(config: RunConfig) -> str:
    """How the classifiers were judged: the verdict's interval, the covariate controls, the permutation test."""
    tr = config.training
    text = (f"Each classifier's pooled out-of-fold ROC AUC was compared with chance (0.5) by a 95 % percentile "
            f"bootstrap interval over subjects ({config.evaluation.n_bootstrap} resamples"
            + (", each also drawing one repeat of the cross-validation at random, so that the interval holds the "
               "repeat-to-repeat variation of training" if tr.repeats > 1 else "")
            + "); an interval entirely below 0.5 was reported as a finding (below chance: usually confounded folds).")
    covariates = [c for c in tr.covariates if c.lower() != "none"]
    if covariates:
        text += (f" As confound controls, logistic regressions on each covariate ({', '.join(covariates)}) alone and "
                 "on all together were cross-validated on the same folds; whether the network's out-of-fold logit "
                 "added to the covariates was tested with nested logistic regressions on one row per subject "
                 "(likelihood-ratio test, 1 degree of freedom; odds ratio per SD with its Wald 95 % interval).")
    if tr.permutation_test:
        text += (f" A label-permutation test with retraining [@ojala2010permutation] reran the whole "
                 f"cross-validation on {tr.permutation_test} permutations of the diagnoses"
                 + (" (within each site)" if tr.cv == "leave-site-out" else "")
                 + "; p = (1 + #{AUC_perm >= AUC}) / (1 + N).")
    return text


#: What the classifiers read, per input channel set (the model cards' ``Input.Channels``).
INPUT_TEXT = {
    ("intensity",): "the preprocessed T1w images",
    ("logjacobian",): "the log Jacobian determinant of each image's deformation to the template beyond its global "
                      "affine part (tensor-based morphometry)",
    ("intensity", "logjacobian"): "two channels: the preprocessed T1w image and the log Jacobian determinant of its "
                                  "deformation to the template beyond its global affine part (tensor-based "
                                  "morphometry)",
}


#: What the template of each space is (the ICBM 2009 templates of Fonov et al.), by TemplateFlow identifier.
TEMPLATE_NAMES = {
    "MNI152NLin2009cAsym": "the ICBM 2009c nonlinear asymmetric template",
    "MNI152NLin2009aSym": "the ICBM 2009a nonlinear symmetric template",
}


@dataclasses.dataclass(frozen=True)
class Provenance:
    """What the outputs record about how they were made (empty before any step ran).

    Attributes
    ----------
    space, template_source : str or None
        The ``space`` entity of the preprocessed scans and where the template came from
        (``Template.TemplateSource`` of their sidecar: ``templateflow`` or ``nilearn``).
    preprocessing : dict
        The first preprocessed scan's sidecar.
    card : dict
        The first trained fold's model card.
    subject_scores : dict
        The sidecar of ``group/subject_overlap.tsv`` (empty: no subject-level scores).
    """

    space: str | None = None
    template_source: str | None = None
    preprocessing: dict = dataclasses.field(default_factory=dict)
    card: dict = dataclasses.field(default_factory=dict)
    subject_scores: dict = dataclasses.field(default_factory=dict)
    faithfulness: dict = dataclasses.field(default_factory=dict)

    def versions(self) -> dict[str, str]:
        """Software versions: this installation's, replaced by the model card's and then the scans' records."""
        return {**software_versions(), **self.card.get("Software", {}), **self.preprocessing.get("Software", {})}

    def training(self, tr: TrainingOptions) -> TrainingOptions:
        """``tr`` with the model, folds, repeats, preset and settings the model card records."""
        recorded = {**self.card.get("Training", {}), "model": self.card.get("Model"), "folds": self.card.get("Folds"),
                    "preset": self.card.get("Preset"), "repeats": self.card.get("Repeats")}
        fields = {f.name for f in dataclasses.fields(tr)}
        return dataclasses.replace(tr, **{k: v for k, v in recorded.items() if k in fields and v is not None})


def provenance(derivs: Derivatives, model: str) -> Provenance:
    """Read :class:`Provenance` from the first preprocessed scan and the first trained fold of ``model``."""
    found = find_preproc(derivs.root)
    side = sidecar_path(found[0][0]) if found else None
    preprocessing = read_json(side) if side is not None and side.is_file() else {}
    folds = trained_folds(derivs.root / "models", model)
    card = read_json(fold_dir(derivs.root / "models", model, folds[0]) / MODEL_CARD) if folds else {}
    subject_side, faithfulness_side = (sidecar_path(group_table(derivs.root, table))
                                       for table in (SUBJECT_OVERLAP, FAITHFULNESS))
    return Provenance(space=found[0][1].get("space") if found else None,
                      template_source=preprocessing.get("Template", {}).get("TemplateSource"),
                      preprocessing=preprocessing, card=card,
                      subject_scores=read_json(subject_side) if subject_side.is_file() else {},
                      faithfulness=read_json(faithfulness_side) if faithfulness_side.is_file() else {})


def subject_text(sidecar: dict) -> str:
    """The methods text's sentences on the subject-level scores, from their sidecar (empty without them)."""
    if not sidecar:
        return ""
    subjects = sorted({s for ref in sidecar.get("SubjectReferences", {}).values() for s in ref.get("Subjects", [])})
    return (f"Where participants had a reference of their own (the simulated atrophy of each of {len(subjects)} "
            "participants), each participant's own out-of-fold heatmap and control maps were also scored against "
            "that participant's own reference with the same metrics; these subject-level scores were summarised "
            "per diagnosis as the mean over participants, with a basic bootstrap interval over participants "
            f"({sidecar.get('NBootstrap', 0)} resamples), the mean of the participants' chance levels and the "
            "paired difference with the strongest applicable control. ")


def faithfulness_fill_text(fill: str) -> str:
    """The methods text's clause on what removed voxels of the faithfulness curves became (``--faithfulness-fill``)."""
    if fill == "mean":
        return "the removed voxels being replaced by the mean image of the fold's training scans"
    faces, edges = (round(1 / next(w for o, w in NEIGHBOURS if sum(map(abs, o)) == n)) for n in (1, 2))
    return ("the removed voxels being replaced by noisy linear imputation [@rong2022consistent], so that the "
            "removed shape left no outline the model could read: each removed voxel was set to the weighted mean of "
            f"its neighbours inside the brain (face neighbours 1/{faces}, edge neighbours 1/{edges}, renormalised), "
            f"the kept voxels fixed, plus Gaussian noise of {NOISE:g} times the channel's standard deviation; "
            "insertion started from the scan with every unit of the curve imputed and imputed the units not yet put "
            "back anew at every step")


def template_text(space: str, source: str | None, versions: dict[str, str]) -> str:
    """The template a run registered to, where it came from, and why when it is the offline fallback."""
    text = (f"the brain of {TEMPLATE_NAMES.get(space, 'the template')} [@fonov2009unbiased; @fonov2011unbiased] "
            f"(TemplateFlow identifier `{space}`)")
    if source == "templateflow":
        return text + f", obtained through TemplateFlow {versions.get('templateflow', '')} [@ciric2022templateflow]"
    if source == "nilearn":
        text += f", the copy distributed with Nilearn {versions.get('nilearn', '')} [@abraham2014nilearn]"
        if space != DEFAULT_SPACE:
            text += f" (TemplateFlow could not provide {DEFAULT_SPACE} when the scans were preprocessed)"
    return text


def render_citation(config: RunConfig, steps: set[str], channels: tuple[str, ...] = ("intensity",),
                    made: Provenance | None = None) -> tuple[str, str]:
    """Render the Markdown methods text and the BibTeX of the given steps.

    ``channels``: what the models read; ``made``: what the outputs record (:func:`provenance`), which wins over
    ``config`` and this installation's versions (default: nothing recorded; the template then is the one
    ``config`` asks for, from TemplateFlow).
    """
    from adheat_app.attribution.catalog import selected_methods

    made = made or Provenance()
    folder = boilerplate_dir()
    versions = made.versions()
    ex, hm = config.execution, config.heatmaps
    pre = dataclasses.replace(config.preprocessing, **{
        field: made.preprocessing[key] for field, key in (("registration", "RegistrationMethod"),
                                                         ("intensity_norm", "IntensityNormalization"))
        if key in made.preprocessing})
    tr = made.training(config.training)
    values = {
        **{k.replace("-", "_"): v for k, v in versions.items()},
        "resolution": f"{ex.resolution:g}",
        "registration_text": BACKENDS[pre.registration].methods_text(versions),
        "template_text": template_text(made.space or DEFAULT_SPACE,
                                       made.template_source if made.space else "templateflow", versions),
        "intensity_norm": {"whitematter": "divided by the median intensity of the template's white matter "
                                          "(standardisation on white matter, after [@shinohara2014whitestripe])",
                           "zscore": "z-scored within the brain mask",
                           "histogram": "normalised by histogram matching within the brain mask"}[pre.intensity_norm],
        "model": tr.model, "training_text": _training_text(tr), "seed": ex.seed,
        "cv_text": _cv_text(tr), "validation_text": _validation_text(config),
        "input_text": INPUT_TEXT.get(channels, ", ".join(channels)),
        "positive": tr.positive_label, "negative": tr.negative_label,
        "methods": ", ".join(selected_methods(hm.methods)), "ig_steps": hm.ig_steps, "lrp_rule": hm.lrp_rule,
        "target_text": {"positive": f"the positive class ({tr.positive_label}) for every scan",
                        "true": "each participant's true class", "predicted": "the predicted class"}[hm.target],
        "output_text": {"difference": "the difference of the two logits (target minus other class)",
                        "logit": "the target class's logit",
                        "probability": "the target class's probability"}[hm.explain_output],
        "ig_baseline_text": {"template": "the mean image of the fold's training scans", "zero": "zero",
                             "blurred": f"the scan smoothed by a {BLUR_FWHM_MM:g} mm FWHM Gaussian"}[hm.ig_baseline],
        "occlusion_fill_text": {"template": "the mean image of the fold's training scans",
                                "zero": "zero"}[hm.occlusion_fill],
        "n_bootstrap": config.evaluation.n_bootstrap, "n_surrogates": config.evaluation.n_surrogates,
        "interval_repeats_text": (f"; each resample also drew one of the {tr.repeats} repeats of the "
                                  "cross-validation at random, the same for every map, and scored that repeat's "
                                  "maps, so that the intervals hold the repeat-to-repeat variation of training; "
                                  "the point estimate averaged the scores of the repeats' group maps"
                                  if tr.repeats > 1 else ""),
        "reference_text": reference_methods_text(config), "subject_text": subject_text(made.subject_scores),
        "twin_draws": RANDOM_DRAWS, "twin_min_effect": f"{MIN_EFFECT:g}",
        "faithfulness_fill_text": faithfulness_fill_text(
            made.faithfulness.get("Fill", "mean") if made.faithfulness else config.evaluation.faithfulness_fill),
        "faithfulness_bootstrap": made.faithfulness.get("NBootstrap", config.evaluation.n_bootstrap),
    }
    text = (folder / "CITATION.md").read_text(encoding="utf-8")
    kept = _SECTION_RE.sub(lambda m: m["body"] if m["step"] in steps else "", text)
    markdown = string.Template(kept).substitute(values)
    cited = set(re.findall(r"@([A-Za-z0-9_:-]+)", markdown))
    bib = (folder / "CITATION.bib").read_text(encoding="utf-8")
    entries = [m.group(0).rstrip() + "\n" for m in _BIB_RE.finditer(bib) if m["key"].strip() in cited]
    return markdown, "\n".join(entries)


def dataset_citation(config: RunConfig, derivs: Derivatives) -> tuple[str, str]:
    """The methods text and BibTeX of the steps whose outputs exist in ``derivs``, for the input the models read."""
    model = config.training.model
    made = provenance(derivs, model)
    return render_citation(config, steps_present(derivs, model),
                           card_channels(made.card) if made.card else ("intensity",), made)


def write_citation(config: RunConfig, derivs: Derivatives) -> None:
    """Write ``logs/CITATION.md`` and ``logs/CITATION.bib`` for the steps present."""
    with derivs.lock():  # concurrent runs: the pair is rendered and written by one run at a time
        markdown, bib = dataset_citation(config, derivs)
        write_text(derivs.root / "logs" / "CITATION.md", markdown)
        write_text(derivs.root / "logs" / "CITATION.bib", bib)
