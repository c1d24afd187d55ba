"""One frozen run configuration, declared once, read from the command line or a file.

Every option of adheat is a field of one of the section dataclasses below
(:class:`ExecutionOptions`, :class:`PreprocessingOptions`, ...). Each field
carries its help text, so the command-line parser (:mod:`adheat_app.cli.parser`)
is generated from these declarations and a ``--config-file`` (TOML or JSON, one
table per section) uses the same names. Adding an option to a later stage is one
field here; the parser, the config file and the saved run configuration follow.

Precedence: built-in defaults < ``--preset`` < ``--config-file`` < command-line flags.
The resolved configuration is written to ``output_dir/logs/`` with every run,
and can be passed back with ``--config-file`` to repeat a run.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from adheat_app.errors import InputError
from adheat_app.layout import is_json


def option(default: Any, help: str, *, choices: tuple | None = None, metavar: str | None = None,
           short: str | None = None, type: Any = None, registry: str | None = None) -> Any:
    """Declare a configuration field with its command-line help.

    Parameters
    ----------
    default
        Default value (a tuple for options that take several values).
    help : str
        Help text shown by ``adheat --help``; ``%(default)s`` is expanded.
    choices : tuple, optional
        Allowed values.
    metavar, short
        Command-line metavariable and short flag (e.g. ``"-w"``).
    type : callable, optional
        Element type when ``default`` is None or an empty tuple.
    registry : str, optional
        ``"module:NAME"`` of the :class:`~adheat_app.registry.Registry` whose names are the allowed values
        (read when the parser is built or options are checked: this module imports no step).
    """
    meta = {"help": help, "choices": choices, "metavar": metavar, "short": short, "type": type,
            "registry": registry}
    if isinstance(default, (list, tuple)):
        return field(default=tuple(default), metadata=meta)
    return field(default=default, metadata=meta)


def option_choices(fld: dataclasses.Field) -> tuple | None:
    """The allowed values of an option: its ``choices``, or the names of its ``registry`` (sorted)."""
    registry = fld.metadata.get("registry")
    if registry is None:
        return fld.metadata.get("choices")
    module, _, name = registry.partition(":")
    return tuple(sorted(getattr(importlib.import_module(module), name)))


@dataclass(frozen=True)
class ExecutionOptions:
    """Which data to process, and with which resources."""

    participant_label: tuple[str, ...] = option(
        (), "Subjects to process (with or without 'sub-'); default: all.", metavar="LABEL", type=str)
    session_label: tuple[str, ...] = option(
        (), "Sessions to process (with or without 'ses-'); default: all.", metavar="LABEL", type=str)
    skip_bids_validation: bool = option(False, "Do not run the BIDS validator on the input dataset.")
    work_dir: str | None = option(
        None, "Folder for caches and intermediate files (default: OUTPUT_DIR/work). "
        "On a cluster, point it at node-local scratch.", short="-w", metavar="DIR", type=str)
    nprocs: int = option(0, "Subjects processed in parallel; 0 = number of CPUs.", type=int)
    omp_nthreads: int = option(0, "Threads per process (ANTs, torch); 0 = CPUs / nprocs.", type=int)
    mem_gb: float = option(0.0, "Memory budget in GB used to size batches; 0 = no limit.", type=float)
    seed: int = option(42, "Random seed for every stochastic step (registration sampling, "
                       "folds, weights, augmentation, simulation). Default: %(default)s.", type=int)
    device: str = option("auto", "Compute device for the CNN: auto (CUDA when available), cpu or cuda.",
                         choices=("auto", "cpu", "cuda"))
    overwrite: bool = option(False, "Recompute outputs that already exist instead of skipping them.")
    resolution: float = option(
        2.0, "Voxel size of the analysis grid in mm (isotropic). The default 2 mm (97x115x97) "
        "keeps CPU-only runs practical; 1 mm (193x229x193) matches the papers.", type=float)
    verbose: int = option(0, "More console output (-v adds debug messages; the log file always has them).", short="-v")


@dataclass(frozen=True)
class PreprocessingOptions:
    """T1w to template space."""

    registration: str = option("syn", "Registration backend to the template (the backends are described in "
                               "README, 'Registration backends').", registry="adheat_app.preprocess.backends:BACKENDS")
    skull_strip: str = option("auto", "Brain extraction with deepbet: 'auto' skips inputs that are "
                              "already skull-stripped.", choices=("auto", "force", "skip"))
    intensity_norm: str = option(
        "whitematter", "Intensity normalisation inside the brain mask: whitematter (divide by the median of the "
        "template's white matter, which a regional change cannot move), zscore (mean and SD of the brain) or "
        "histogram (percentiles matched to the template, then z-scored).",
        choices=("whitematter", "zscore", "histogram"))
    anat_derivatives: str | None = option(
        None, "Reuse an fMRIPrep/sMRIPrep output folder "
        "(space-MNI152NLin2009cAsym desc-preproc_T1w + desc-brain_mask) instead of registering.",
        metavar="DIR", type=str)


@dataclass(frozen=True)
class TrainingOptions:
    """Cohort labels, CNN and cross-validation."""

    label_column: str = option("diagnosis", "participants.tsv column holding the diagnosis.", type=str)
    positive_label: str = option("AD", "Label of the positive (disease) class.", type=str)
    negative_label: str = option("CN", "Label of the negative (control) class.", type=str)
    preset: str = option(
        "adheat", "Training set-up: 'adheat' (the defaults below, chosen by measurement on simulated cohorts), "
        "or a published one: 'rieke2018' (their model; Adam 1e-4, batch 5, 20 epochs) or 'wang2023' (their "
        "model A; Adam 1e-4, weight decay 1e-4, batch 5, up to 200 epochs, early stopping with patience 10). "
        "Training options given explicitly override the preset.", choices=("adheat", "rieke2018", "wang2023"))
    model: str = option("resnet3d", "CNN architecture (see 'Models' in README).", type=str)
    input: str = option("auto", "What the CNN and the SVM read: the preprocessed T1w (intensity), the log "
                        "Jacobian determinant of its deformation to the template (logjacobian; needs "
                        "a deformable --registration, syn or fireants, at the participant level), both as two channels, or auto: both "
                        "when every scan has a log Jacobian map, else intensity.",
                        choices=("auto", "intensity", "logjacobian", "both"))
    covariates: tuple[str, ...] = option(
        ("age", "sex", "site"), "participants.tsv columns tested as confounds: a logistic regression on each column "
        "alone, and one on all together (covariate-all), is cross-validated on the CNN's folds (model "
        "covariate-<column> in group/cv_metrics.tsv); one that predicts the diagnosis better than chance is flagged "
        "in the report. Nested logistic models test whether the CNN adds to them "
        "(group/covariates_nested_test.tsv). Default columns that are absent are skipped, columns you name must "
        "exist; 'none' tests none.", metavar="COLUMN", type=str)
    folds: int = option(5, "Number of cross-validation folds (split by subject, stratified).", type=int)
    fold: int | None = option(None, "Train only this fold (0-based), e.g. one scheduler job per fold.",
                              type=int)
    cv: str = option("kfold", "Cross-validation: kfold (--folds stratified folds grouped by subject) or "
                     "leave-site-out (one fold per value of participants.tsv's 'site' column: each site is "
                     "tested by models trained on the other sites; --folds is ignored).",
                     choices=("kfold", "leave-site-out"))
    repeats: int = option(1, "Repeats of the cross-validation with new fold splits and seeds (repeat 0 is the "
                          "plain run); the verdict's and the overlap scores' intervals then add repeat-to-repeat "
                          "variation to subject resampling (docs/training.md, docs/evaluation.md). Costs R times the "
                          "training.", type=int)
    repeat: int | None = option(None, "With --fold: train that fold of this repeat (0-based), e.g. one scheduler "
                                "job per repeat and fold.", type=int)
    permutation_test: int = option(
        0, "Label permutations of the permutation test with retraining (Ojala & Garriga 2010): the whole "
        "cross-validation is rerun N times on permuted diagnoses; p = (1 + #{AUC_perm >= AUC}) / (1 + N). "
        "Costs N times the training; 0 = none.", metavar="N", type=int)
    steps: int = option(600, "Training budget in optimiser steps per fold, rounded up to whole epochs "
                        "(a small cohort trains as long as a large one); 0 = train --epochs epochs.", type=int)
    epochs: int = option(30, "Training epochs per fold when --steps is 0 (the maximum, with early stopping).",
                         type=int)
    batch_size: int = option(4, "Training batch size.", type=int)
    learning_rate: float = option(2e-3, "Peak learning rate.", type=float)
    weight_decay: float = option(0.05, "Weight decay (decoupled for adamw, an L2 penalty for adam).",
                                 type=float)
    optimizer: str = option("adamw", "Optimiser: adamw or adam.", choices=("adamw", "adam"))
    schedule: str = option("cosine", "Learning-rate schedule over the training budget: cosine (linear warm-up "
                           "over the first tenth of the steps, then cosine decay to 0) or constant.",
                           choices=("cosine", "constant"))
    input_noise: float = option(1.0, "Standard deviation of the Gaussian noise added to the brain voxels of "
                                "every training volume, in the units of each input channel (white matter = 1 "
                                "with --intensity-norm whitematter; log Jacobian / 0.2); 0 = none.", type=float)
    patience: int = option(0, "Early stopping: epochs without validation-loss improvement (0 = no early "
                           "stopping: the model of the last epoch is kept).", type=int)
    val_fraction: float = option(0.0, "Fraction of each training fold's subjects held out as a validation set "
                                 "(needed for early stopping; 0 = none).", type=float)
    augment: bool = option(False, "Light augmentation: small random shifts and intensity jitter "
                           "(no left-right flips: atrophy in AD is asymmetric).")
    amp: bool = option(True, "Mixed precision on CUDA (ignored on CPU); --no-amp disables it.")


#: The ``--methods`` value that means the methods declaring themselves defaults (``default = True`` in their
#: classes): :func:`adheat_app.attribution.catalog.selected_methods` expands it, and the command line shows and
#: records the methods it stands for (:func:`adheat_app.cli.parser.resolve_defaults`).
DEFAULT_METHODS = "default"


@dataclass(frozen=True)
class HeatmapOptions:
    """Heatmap (attribution) methods and their parameters."""

    methods: tuple[str, ...] = option(
        (DEFAULT_METHODS,),
        "Heatmap methods. Default: the methods chosen on the development cohorts of benchmarks/ranking.py "
        "(README, 'The default --methods'). 'wang2023' selects IG LRP GGC, 'rieke2018' Saliency "
        "GuidedBackprop Occlusion AreaOcclusion, 'all' every method.", metavar="METHOD", type=str)
    models: str | None = option(None, "Folder of trained models (default: OUTPUT_DIR/models).",
                                metavar="DIR", type=str)
    target: str = option("positive", "Class explained: always the positive class (every map, and so every "
                         "group mean including 'all', explains the same output), the subject's true class (as "
                         "Wang et al.; group means then mix classes, which their sidecars record), or the "
                         "predicted class.", choices=("positive", "true", "predicted"))
    explain_output: str = option(
        "difference", "Output explained by every method: the logit difference z_target - z_other (log-odds; "
        "free of the offset both logits share, never saturates), the target logit (as Wang et al.), or the "
        "target probability (as Rieke et al.; computed without float32 saturation, but its maps shrink as "
        "p(1-p) for confident subjects).", choices=("difference", "logit", "probability"))
    ig_steps: int = option(32, "Integrated Gradients: integration steps.", type=int)
    ig_baseline: str = option(
        "template", "Integrated Gradients baseline: the mean image of the fold's training scans (template), 0 "
        "(zero: after per-brain z-scoring a flat brain at the subject's mean intensity, not black as in Wang et "
        "al.), or the scan blurred by a 12 mm FWHM Gaussian.", choices=("template", "zero", "blurred"))
    lrp_rule: str = option("alphabeta", "LRP rule on conv/linear layers (BatchNorm is folded first): "
                           "alphabeta (alpha=1.5, beta=0.5, as Wang et al.), epsilon, zplus, or the "
                           "composite epsilonplusflat (flat rule at the input layer, z+ on convolutions, epsilon on "
                           "dense layers; Kohlbrenner et al. 2020).",
                           choices=("alphabeta", "epsilon", "zplus", "epsilonplusflat"))
    lrp_epsilon: float = option(1e-6, "LRP epsilon (epsilon rule, and stabiliser of the others).",
                                type=float)
    occlusion_size: float = option(20.0, "Occlusion patch edge in mm (Rieke et al.: 40).", type=float)
    occlusion_stride: float = option(
        20.0, "Occlusion stride in mm (the patch edge: non-overlapping patches, 1,200 per channel on the MNI grid at "
        "2 and 4 mm; 10 mm costs 7-12x more, docs/heatmaps.md).", type=float)
    occlusion_fill: str = option(
        "template", "Value occluded voxels get (Occlusion, AreaOcclusion): the fold's training mean image "
        "(template; Rieke et al.'s 0 was the population mean of voxel-wise z-scored images) or 0 (zero: the "
        "subject's mean brain intensity after per-brain z-scoring).", choices=("template", "zero"))
    noise_lambda: float = option(1e-3, "NoiseImportance: weight of the noise-maximising term.",
                                 type=float)
    noise_steps: int = option(100, "NoiseImportance: optimisation steps per subject.", type=int)
    smoothgrad_samples: int = option(25, "SmoothGrad: noisy copies of each scan (gradients averaged).", type=int)
    smoothgrad_noise: float = option(
        0.15, "SmoothGrad: noise standard deviation as a fraction of each input channel's range of values "
        "(Smilkov et al.: 0.1-0.2).", type=float)
    native_space: bool = option(False, "Also write heatmaps mapped back to each subject's T1w grid.")
    sanity_check: bool = option(False, "Adebayo et al. randomisation checks of every method: the model-randomisation "
                                "cascade, each method's maps of the fully randomised models (<Method>Random "
                                "controls) and of fold models trained on permuted labels (<Method>PermutedLabels "
                                "controls; trains every fold a second time).")
    heatmap_batch_size: int = option(
        0, "Volumes per forward/backward pass of the heatmap methods (scans, IG steps, occlusion "
        "patches); 0 = sized from --mem-gb (16 at most). Keep it equal between participant and group "
        "runs for bitwise identical heatmaps.", type=int)


@dataclass(frozen=True)
class EvaluationOptions:
    """Group maps, reference map and scores."""

    reference_map: str | None = option(
        None, "Reference map of AD atrophy: a NIfTI map in MNI space (e.g. a published ALE map), or peak "
        "coordinates for an ALE meta-analysis with NiMARE: a Sleuth .txt file or a .tsv of foci (study, n_subjects, "
        "x, y, z in MNI mm). The built-in region prior 'anatomicalprior' is always scored too.",
        metavar="FILE", type=str)
    reference_threshold: float | None = option(
        None, "Threshold binarising the reference map (default: the 'Threshold' of the map's JSON sidecar, "
        "else 0; for foci: cluster-level FWE p < 0.05 of the ALE map, else ALE > this value).", type=float)
    atlas: str = option("AAL3", "Atlas for the region table.", choices=("AAL3",))
    n_bootstrap: int = option(1000, "Bootstrap resamples (over subjects) for confidence intervals.",
                              type=int)
    faithfulness: bool = option(
        False, "Deletion and insertion curves (AOPC; Samek et al. 2017) of every method's and control's maps: AAL3 "
        "regions and blocks of 5 percent of the voxels removed most relevant first, least relevant first and at "
        "random, filled as --faithfulness-fill says (group/faithfulness.tsv, and every step's mean output in "
        "group/faithfulness_curves.tsv, drawn in group.html; 120 forward passes per scan and map).")
    faithfulness_fill: str = option(
        "mean", "What removed voxels of the faithfulness curves become: mean (the fold's training mean image; "
        "cheap) or noisy-linear (ROAD, Rong et al. 2022: each removed voxel the weighted mean of its neighbours, "
        "kept voxels fixed, plus 1 percent noise, so the removed shape leaves no outline for the model to read; "
        "114 sparse solves per scan and map: measured at 4 mm, 3.4 s against the mean fill's 0.5 s per scan and "
        "map, docs/heatmaps.md).", choices=("mean", "noisy-linear"))
    twin_test: bool = option(
        True, "The twin test, when the input dataset is a simulated cohort with twins (adheat-simulate --twins): each "
        "twin preprocessed as its scan, and the share of the model's output difference between scan and twin that "
        "each map's top region recovers when it is taken from the twin, against random grey-matter regions and "
        "the true atrophied region (group/twin_test.tsv); --no-twin-test skips it.")
    n_permutations: int = option(
        1000, "Label permutations of the cohort reference (voxel-wise AD vs CN t-test, max-t FWE; 0 skips it) "
        "and Monte Carlo iterations of the cluster-level FWE of an ALE from --reference-map foci.",
        type=int)
    n_surrogates: int = option(
        100, "Smooth random maps per primary comparison: the spatial null of the answer (random maps as smooth as "
        "the method's map, with its values; 0 skips it).", type=int)


#: Training options of the published set-ups (``--preset``); explicit options override them.
PRESETS: dict[str, dict[str, Any]] = {
    "adheat": {},
    "rieke2018": {"model": "rieke2018", "optimizer": "adam", "learning_rate": 1e-4, "weight_decay": 0.0,
                  "batch_size": 5, "steps": 0, "epochs": 20, "schedule": "constant", "input_noise": 0.0,
                  "patience": 0, "val_fraction": 0.0},
    "wang2023": {"model": "wang2023", "optimizer": "adam", "learning_rate": 1e-4, "weight_decay": 1e-4,
                 "batch_size": 5, "steps": 0, "epochs": 200, "schedule": "constant", "input_noise": 0.0,
                 "patience": 10, "val_fraction": 0.2},
}

SECTIONS: dict[str, type] = {
    "execution": ExecutionOptions,
    "preprocessing": PreprocessingOptions,
    "training": TrainingOptions,
    "heatmaps": HeatmapOptions,
    "evaluation": EvaluationOptions,
}


@dataclass(frozen=True)
class RunConfig:
    """The complete, immutable configuration of one invocation."""

    bids_dir: Path
    output_dir: Path
    analysis_level: tuple[str, ...]
    execution: ExecutionOptions = field(default_factory=ExecutionOptions)
    preprocessing: PreprocessingOptions = field(default_factory=PreprocessingOptions)
    training: TrainingOptions = field(default_factory=TrainingOptions)
    heatmaps: HeatmapOptions = field(default_factory=HeatmapOptions)
    evaluation: EvaluationOptions = field(default_factory=EvaluationOptions)

    @property
    def work_dir(self) -> Path:
        """Folder for caches (``--work-dir`` or ``OUTPUT_DIR/work``)."""
        wd = self.execution.work_dir
        return Path(wd).absolute() if wd else self.output_dir / "work"

    @property
    def models_dir(self) -> Path:
        """Folder of trained models (``--models`` or ``OUTPUT_DIR/models``)."""
        md = self.heatmaps.models
        return Path(md).absolute() if md else self.output_dir / "models"

    def replace(self, section: str, **changes: Any) -> RunConfig:
        """Return a copy with fields of one section changed."""
        return dataclasses.replace(self, **{section: dataclasses.replace(getattr(self, section), **changes)})

    def to_dict(self) -> dict:
        """Sections as plain dicts (None values dropped, as TOML has no null)."""
        out: dict[str, Any] = {
            "bids_dir": str(self.bids_dir),
            "output_dir": str(self.output_dir),
            "analysis_level": list(self.analysis_level),
        }
        for name in SECTIONS:
            values = dataclasses.asdict(getattr(self, name))
            out[name] = {k: list(v) if isinstance(v, tuple) else v for k, v in values.items() if v is not None}
        return out

    def to_toml(self) -> str:
        """The configuration as TOML, loadable with ``--config-file``."""
        return tomli_w.dumps(self.to_dict())


def load_config_file(path: str | Path) -> dict[str, dict[str, Any]]:
    """Read a TOML or JSON config file into ``{section: {field: value}}``.

    Keys may use ``-`` or ``_``. Unknown sections or keys are input errors, so a
    typo never silently falls back to a default.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"cannot read config file {path}: {exc.strerror}; check the path") from exc
    try:
        raw = json.loads(text) if is_json(path) else tomllib.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise InputError(f"config file {path} is not valid {path.suffix.lstrip('.').upper() or 'TOML'}: "
                         f"{exc}") from exc
    out: dict[str, dict[str, Any]] = {}
    for section, values in raw.items():
        if section in ("bids_dir", "output_dir", "analysis_level"):
            continue  # positional arguments always come from the command line
        if section not in SECTIONS or not isinstance(values, dict):
            raise InputError(f"config file {path}: unknown section [{section}]; "
                             f"valid sections: {', '.join(SECTIONS)}")
        names = {f.name for f in dataclasses.fields(SECTIONS[section])}
        clean = {}
        for key, value in values.items():
            name = key.replace("-", "_")
            if name not in names:
                raise InputError(f"config file {path}: unknown option '{key}' in [{section}]")
            clean[name] = tuple(value) if isinstance(value, list) else value
        out[section] = clean
    return out


def build_config(bids_dir: Path, output_dir: Path, analysis_level: tuple[str, ...],
                 file_values: dict[str, dict[str, Any]], cli_values: dict[str, dict[str, Any]]) -> RunConfig:
    """Merge defaults, ``--preset``, config-file values and command-line values into a :class:`RunConfig`."""
    sections = {}
    for name, cls in SECTIONS.items():
        merged = {**file_values.get(name, {}), **cli_values.get(name, {})}
        if name == "training":
            merged = {**PRESETS.get(merged.get("preset", "adheat"), {}), **merged}
        try:
            sections[name] = cls(**merged)
        except TypeError as exc:  # pragma: no cover - names are checked before
            raise InputError(f"invalid options for [{name}]: {exc}") from exc
    return RunConfig(Path(bids_dir).absolute(), Path(output_dir).absolute(), tuple(analysis_level), **sections)
