"""Option values checked before anything is written: one rule per option, one line per refusal.

The options are declared once in :mod:`adheat_app.config`; this module holds
what values each can take. :func:`check_options` runs every rule of
:data:`RULES` (ranges of numbers) and the checks that need more than a range
(known models and methods, existing paths, a trained-models folder with the
layout the participant level reads). Each refusal is an
:class:`~adheat_app.errors.InputError` whose one-line message names the option,
the value given, the values allowed and the default.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
from dataclasses import dataclass
from pathlib import Path

from adheat_app.config import SECTIONS, RunConfig
from adheat_app.errors import InputError
from adheat_app.layout import MODEL_WEIGHTS, fold_dir, trained_folds, trained_models


@dataclass(frozen=True)
class Range:
    """Allowed values of a numeric option: ``low`` to ``high``, each bound included unless ``open_*``."""

    low: float = -math.inf
    high: float = math.inf
    open_low: bool = False
    open_high: bool = False

    def admits(self, value: float) -> bool:
        """Whether ``value`` lies in the range."""
        above = value > self.low if self.open_low else value >= self.low
        below = value < self.high if self.open_high else value <= self.high
        return above and below

    def describe(self) -> str:
        """The range in words (``at least 1``, ``between 0 and 0.5 (exclusive)``)."""
        if self.high == math.inf:
            return f"{'greater than' if self.open_low else 'at least'} {self.low:g}"
        if self.low == -math.inf:
            return f"{'less than' if self.open_high else 'at most'} {self.high:g}"
        ends = {(False, False): "", (True, True): " (both exclusive)", (True, False): f" ({self.low:g} exclusive)",
                (False, True): f" ({self.high:g} exclusive)"}[(self.open_low, self.open_high)]
        return f"between {self.low:g} and {self.high:g}{ends}"


POSITIVE = Range(0, open_low=True)
AT_LEAST_1 = Range(1)
NON_NEGATIVE = Range(0)

#: ``{section: {option: Range}}`` for every numeric option whose values are limited.
RULES: dict[str, dict[str, Range]] = {
    "execution": {"nprocs": NON_NEGATIVE, "omp_nthreads": NON_NEGATIVE, "mem_gb": NON_NEGATIVE,
                  "seed": NON_NEGATIVE, "resolution": Range(0.5, 8)},
    "training": {"folds": Range(2), "fold": NON_NEGATIVE, "steps": NON_NEGATIVE, "epochs": AT_LEAST_1,
                 "batch_size": AT_LEAST_1, "learning_rate": POSITIVE, "weight_decay": NON_NEGATIVE,
                 "input_noise": NON_NEGATIVE, "patience": NON_NEGATIVE, "val_fraction": Range(0, 0.5, open_high=True),
                 "repeats": AT_LEAST_1, "repeat": NON_NEGATIVE, "permutation_test": NON_NEGATIVE},
    "heatmaps": {"ig_steps": AT_LEAST_1, "lrp_epsilon": POSITIVE, "occlusion_size": POSITIVE,
                 "occlusion_stride": POSITIVE, "noise_lambda": NON_NEGATIVE, "noise_steps": AT_LEAST_1,
                 "smoothgrad_samples": AT_LEAST_1, "smoothgrad_noise": POSITIVE, "heatmap_batch_size": NON_NEGATIVE},
    "evaluation": {"n_bootstrap": NON_NEGATIVE, "n_surrogates": NON_NEGATIVE},
}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_ranges(config: RunConfig) -> None:
    """Refuse a numeric option outside its :data:`RULES` range, naming the option, the range and the default."""
    for section, rules in RULES.items():
        values = getattr(config, section)
        defaults = {f.name: f.default for f in dataclasses.fields(SECTIONS[section])}
        for name, allowed in rules.items():
            value = getattr(values, name)
            if value is not None and not allowed.admits(value):
                default = f" (default {defaults[name]:g})" if defaults[name] is not None else ""
                raise InputError(f"{_flag(name)} {value:g} is out of range: it must be {allowed.describe()}{default}")


def check_models_dir(config: RunConfig) -> None:
    """Refuse a ``--models`` folder holding no trained model of ``--model`` for a participant-only run.

    The participant level reads ``DIR/<model>/fold-<k>/model.pt`` with its
    ``model.json``; the group level trains into ``DIR``, so an empty folder is
    fine there.
    """
    if config.heatmaps.models is None or "group" in config.analysis_level:
        return
    root, model = config.models_dir, config.training.model
    layout = f"{root}/{model}/fold-<k>/model.pt + model.json"
    if not root.is_dir():
        raise InputError(f"--models {root} does not exist; pass the models folder of a group run (layout: {layout})")
    if any((fold_dir(root, model, k) / MODEL_WEIGHTS).is_file() for k in trained_folds(root, model)):
        return
    others = [name for name in trained_models(root) if name != model]
    if others:
        hint = f"it holds {', '.join(others)}: pass --model {others[0]}"
    elif trained_folds(root.parent, root.name):
        hint = f"it is one model's folder: pass its parent, --models {root.parent}"
    else:
        hint = "train them with the group level first"
    raise InputError(f"--models {root} holds no trained {model} model (expected {layout}); {hint}")


def check_registration(config: RunConfig) -> None:
    """Refuse an unknown ``--registration`` backend, or a log-Jacobian ``--input`` with a linear one."""
    from adheat_app.preprocess.backends import BACKENDS

    name, wanted = config.preprocessing.registration, config.training.input
    if name not in BACKENDS:
        raise InputError(f"--registration {name}: unknown registration backend; available: "
                         f"{', '.join(sorted(BACKENDS))} (default syn)")
    missing = [package for package in BACKENDS[name].requires if importlib.util.find_spec(package) is None]
    if missing:
        raise InputError(f"--registration {name} needs the Python package {', '.join(missing)}, which is not "
                         f"installed: pip install {' '.join(missing)}, or choose another --registration")
    if wanted in ("logjacobian", "both") and not BACKENDS[name].deformable and "participant" in config.analysis_level:
        deformable = ", ".join(sorted(n for n, backend in BACKENDS.items() if backend.deformable))
        raise InputError(f"--input {wanted} reads the log Jacobian of a deformation, which --registration {name} "
                         f"does not compute; use --registration {deformable.replace(', ', ' or ')} or --input "
                         "intensity")


def check_options(config: RunConfig) -> None:
    """Reject option values that cannot work, naming the option (nothing is written before this passes)."""
    check_ranges(config)
    ex, tr = config.execution, config.training
    if tr.fold is not None and tr.cv == "kfold" and not 0 <= tr.fold < tr.folds:
        raise InputError(f"--fold {tr.fold}: folds are numbered 0 to {tr.folds - 1}")
    if tr.repeat is not None and (tr.fold is None or tr.repeat >= tr.repeats):
        raise InputError(f"--repeat {tr.repeat}: it selects the repeat of a --fold job, numbered 0 to "
                         f"{tr.repeats - 1} (--repeats {tr.repeats}); pass --fold K and --repeats R > {tr.repeat}")
    if tr.patience > 0 and tr.val_fraction == 0:
        raise InputError(f"--patience {tr.patience}: early stopping needs a validation set; add --val-fraction 0.2 "
                         "or set --patience 0")
    check_registration(config)
    if tr.positive_label == tr.negative_label:
        raise InputError("--positive-label and --negative-label must differ")
    from adheat_app.models import MODELS
    if tr.model not in MODELS:
        raise InputError(f"--model {tr.model}: unknown model; available: {', '.join(sorted(MODELS))}")
    from adheat_app.attribution.catalog import selected_methods
    selected_methods(config.heatmaps.methods)
    for name, value in (("--anat-derivatives", config.preprocessing.anat_derivatives),
                        ("--reference-map", config.evaluation.reference_map)):
        if value and not Path(value).exists():
            raise InputError(f"{name} {value} does not exist")
    check_models_dir(config)
    if "group" in config.analysis_level:
        from adheat_app.baseline.covariates import check_covariates
        from adheat_app.training.folds import check_cv
        check_covariates(config)
        check_cv(config)
    if ex.device == "cuda":
        import torch
        if not torch.cuda.is_available():
            raise InputError("--device cuda: no CUDA device is available; use --device cpu or auto")
