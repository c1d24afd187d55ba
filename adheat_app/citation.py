"""``logs/CITATION.md`` and ``logs/CITATION.bib``: methods text for the steps actually run.

The templates live in the top-level ``boilerplate/`` folder (installed to
``share/adheat/boilerplate``). ``CITATION.md`` holds one section per step,
marked ``<!-- step: NAME -->``; a section is kept when the output dataset
contains that step's outputs, and its ``${placeholders}`` are filled from the
run configuration and software versions. Citations are written ``[@key]``;
``CITATION.bib`` receives exactly the entries the kept text cites.
"""

from __future__ import annotations

import re
import string
import sys
from pathlib import Path

from adheat_app.attribution.references import BLUR_FWHM_MM
from adheat_app.bids import Derivatives, software_versions
from adheat_app.config import RunConfig, TrainingOptions
from adheat_app.inputs import card_channels
from adheat_app.io import read_json, write_text
from adheat_app.layout import (
    MODEL_CARD, OVERLAP, find_preproc, fold_dir, group_table, has_heatmaps, is_foci_file, trained_folds,
)

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
    return steps


def _reference_text(config: RunConfig) -> str:
    """Sentences naming the reference maps the overlap scores used."""
    ref = config.evaluation.reference_map
    text = ""
    if ref and is_foci_file(ref):
        text = (f"The reference map was an activation likelihood estimation (ALE) meta-analysis "
                f"[@eickhoff2009ale; @eickhoff2012ale] of the foci in `{Path(ref).name}`, computed with NiMARE and "
                "thresholded at cluster-level family-wise error p < 0.05 (cluster-forming p < 0.001) unless a "
                "threshold was given. ")
    elif ref:
        text = f"The reference map was the user-supplied `{Path(ref).name}`. "
    if config.evaluation.n_permutations > 0:
        text += ("A cohort reference was computed for each input channel as a voxel-wise general linear model of "
                 "the classifier's input (positive vs negative class, with the covariates "
                 f"{', '.join(c for c in config.training.covariates if c.lower() != 'none') or 'none'} where "
                 "present), family-wise error controlled by max-t over "
                 f"{config.evaluation.n_permutations} permutations [@winkler2014permutation] (Nilearn); it comes "
                 "from the same participants whose maps it scores, and a reference with fewer than 0.1 % of the "
                 "brain voxels significant, or whose class was confounded with the covariates, was reported but "
                 "not scored. ")
    return text + ("Scores against adheat's built-in region prior, an ALE-style map [@eickhoff2009ale; "
                   "@eickhoff2012ale] of anatomically defined foci (AAL3 centroids of the regions that VBM "
                   "meta-analyses report as atrophic in AD), are reported too; it is not a meta-analysis.")


def _training_text(tr: TrainingOptions) -> str:
    """One or two sentences on how each fold's network was trained."""
    optimiser = {"adamw": "AdamW", "adam": "Adam"}[tr.optimizer]
    length = (f"{tr.steps} optimiser steps (rounded up to whole epochs)" if tr.steps > 0 else f"{tr.epochs} epochs")
    schedule = ("a cosine learning-rate schedule with linear warm-up" if tr.schedule == "cosine"
                else "a constant learning rate")
    preset = "" if tr.preset == "adheat" else f" (the training set-up of `{tr.preset}`)"
    text = (f"Each network was trained{preset} for {'at most ' if tr.patience > 0 else ''}{length} with "
            f"{optimiser} ({'peak ' if tr.schedule == 'cosine' else ''}learning rate {tr.learning_rate:g}, weight decay {tr.weight_decay:g}, batch size "
            f"{tr.batch_size}) and {schedule}")
    if tr.input_noise > 0:
        text += f", adding Gaussian noise (SD {tr.input_noise:g}) to the brain voxels of each training image"
    if tr.patience > 0:
        text += (f"; a subject-level validation split of each training fold served early stopping "
                 f"(patience {tr.patience} epochs)")
    return text + "."


#: What the classifiers read, per input channel set (the model cards' ``Input.Channels``).
INPUT_TEXT = {
    ("intensity",): "the preprocessed T1w images",
    ("logjacobian",): "the log Jacobian determinant of each image's deformation to the template beyond its global "
                      "affine part (tensor-based morphometry)",
    ("intensity", "logjacobian"): "two channels: the preprocessed T1w image and the log Jacobian determinant of its "
                                  "deformation to the template beyond its global affine part (tensor-based "
                                  "morphometry)",
}


def trained_channels(derivs: Derivatives, model: str) -> tuple[str, ...]:
    """The input channels of ``model``'s trained folds (its first fold's model card; () before training)."""
    folds = trained_folds(derivs.root / "models", model)
    if not folds:
        return ()
    card = read_json(fold_dir(derivs.root / "models", model, folds[0]) / MODEL_CARD)
    return card_channels(card)


def render_citation(config: RunConfig, steps: set[str], channels: tuple[str, ...] = ("intensity",)
                    ) -> tuple[str, str]:
    """Render the Markdown methods text and the BibTeX of the given steps (``channels``: what the models read)."""
    from adheat_app.attribution.catalog import selected_methods

    folder = boilerplate_dir()
    versions = software_versions()
    ex, pre, tr, hm = config.execution, config.preprocessing, config.training, config.heatmaps
    values = {
        **{k.replace("-", "_"): v for k, v in versions.items()},
        "resolution": f"{ex.resolution:g}",
        "registration": {"syn": "rigid, affine and symmetric normalisation (SyN)",
                         "affine": "rigid and affine"}[pre.registration],
        "intensity_norm": {"whitematter": "divided by the median intensity of the template's white matter "
                                          "(standardisation on white matter, after [@shinohara2014whitestripe])",
                           "zscore": "z-scored within the brain mask",
                           "histogram": "normalised by histogram matching within the brain mask"}[pre.intensity_norm],
        "model": tr.model, "folds": tr.folds, "training_text": _training_text(tr), "seed": ex.seed,
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
        "reference_text": _reference_text(config),
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
    return render_citation(config, steps_present(derivs, model), trained_channels(derivs, model) or ("intensity",))


def write_citation(config: RunConfig, derivs: Derivatives) -> None:
    """Write ``logs/CITATION.md`` and ``logs/CITATION.bib`` for the steps present."""
    with derivs.lock():  # concurrent runs: the pair is rendered and written by one run at a time
        markdown, bib = dataset_citation(config, derivs)
        write_text(derivs.root / "logs" / "CITATION.md", markdown)
        write_text(derivs.root / "logs" / "CITATION.bib", bib)
