"""Cross-validated CNN training of the group level: one model per fold, group tables and figures.

:func:`run_training` trains, for every fold of :func:`make_folds` that has no
completed model (or only ``--fold K``), one ``--model`` network and writes its
fold folder ``models/<model>/fold-<k>/``:

- ``split.tsv`` (subjects and sets; written first),
- ``checkpoint.pt`` while training (removed when the fold completes),
- ``model.pt`` (state dict of the best validation-loss epoch),
- ``training_curve.tsv`` / ``training_curve.png``, ``predictions.tsv`` (the
  fold's test scans),
- ``model.json`` (model card), written last: it marks a completed fold and
  records ``TrainingKey``, a hash of everything that shapes the result
  (model, settings, seed, split, image content), so a rerun with other
  settings or data retrains instead of reusing.

With ``--repeats R`` every repeat ``r`` > 0 trains its own folds (new split and
seeds, :func:`adheat_app.training.folds.repeat_seed`) into
``models/<model>/repeat-<r>/fold-<k>/``; ``--fold K --repeat R`` trains one of
them. With ``--cv leave-site-out`` the folds are the sites.

Without ``--fold`` it then writes ``group/cv_metrics.tsv`` and
``group/predictions.tsv`` (rows of this model replaced),
``group/desc-<model>_roc.png``, and the model's verdict against chance
(:func:`adheat_app.training.metrics.chance_verdict`) as
``models/<model>/verdict.json``, beside the fold models it judges, where the
heatmap sidecars read it (:func:`read_verdict`). :func:`fold_dir` and :func:`load_fold_model`
give later steps (heatmaps) the fold models.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from adheat_app import layout
from adheat_app.bids import Derivatives, is_complete, software_versions
from adheat_app.cohort import Cohort, Scan
from adheat_app.config import RunConfig
from adheat_app.errors import InputError
from adheat_app.io import atomic_path, read_json, write_json, write_tsv
from adheat_app.memory import reuse_cpu_memory
from adheat_app.models import MODELS
from adheat_app.plotting import roc_curves, save_png, training_curve
from adheat_app.templates import parse_resolution
from adheat_app.training.device import deterministic, epoch_seed, resolve_device, seed_everything
from adheat_app.training.folds import (Fold, check_labels, check_no_leakage, cohort_folds, repeat_seed, split_hash,
                                      with_cv, write_split)
from adheat_app.training.loop import CURVE_COLUMNS, FoldResult, ScanSet, TrainSettings, predict_logits, train_fold
from adheat_app.training.metrics import (BELOW_CHANCE, classification_metrics, prediction_rows, summarize_folds,
                                         update_table)
from adheat_app.inputs import LOGJACOBIAN, LOGJACOBIAN_UNIT, card_channels, input_key, input_kind, load_inputs

LOGGER = logging.getLogger(__name__)

#: What each ``--intensity-norm`` did to the model's inputs (model card).
NORMALISATION = {
    "whitematter": "divided by the median of the template's white matter, per image (preprocessing)",
    "zscore": "z-score inside the brain mask, per image (preprocessing)",
    "histogram": "histogram-matched to the template, then z-scored inside the brain mask (preprocessing)",
}
PREDICTION_COLUMNS = ("model", "fold", "subject", "session", "diagnosis", "target", "probability", "predicted")


def fold_dir(config: RunConfig, k: int, repeat: int = 0) -> Path:
    """Folder of fold ``k`` (of repeat ``repeat``) of ``--model`` (:func:`adheat_app.layout.fold_dir`)."""
    return layout.fold_dir(config.models_dir, config.training.model, k, repeat)


def read_verdict(models_dir: Path, model: str) -> dict | None:
    """The verdict of :func:`write_group_results` (None before every fold is trained and collected)."""
    path = layout.verdict_path(models_dir, model)
    return read_json(path) if path.is_file() else None


def load_fold_model(fold_dir: Path, device: torch.device) -> tuple[nn.Module, dict]:
    """The trained model of a completed fold folder (eval mode, on ``device``) and its model card."""
    card = read_json(Path(fold_dir) / layout.MODEL_CARD)
    model = MODELS[card["Model"]](tuple(card["Input"]["Shape"]), len(card_channels(card)))
    model.load_state_dict(torch.load(Path(fold_dir) / layout.MODEL_WEIGHTS, map_location=device, weights_only=True))
    return model.to(device).eval(), card


def train_settings(config: RunConfig, repeat: int = 0) -> TrainSettings:
    """The :class:`TrainSettings` of a run configuration (and repeat: its seed is :func:`repeat_seed`)."""
    tr = config.training
    return TrainSettings(epochs=tr.epochs, steps=tr.steps, batch_size=tr.batch_size, learning_rate=tr.learning_rate,
                         weight_decay=tr.weight_decay, optimizer=tr.optimizer, schedule=tr.schedule,
                         patience=tr.patience, input_noise=tr.input_noise, augment=tr.augment, amp=tr.amp,
                         seed=repeat_seed(config.execution.seed, repeat))


def training_key(config: RunConfig, channels: tuple[str, ...], fold: Fold, data_hash: str, repeat: int = 0,
                 extra: dict | None = None) -> str:
    """Hash of everything that determines a fold's model (input ``channels`` included; device and AMP aside;
    ``extra``: e.g. a permutation)."""
    tr = config.training
    identity = {"model": tr.model, "input": input_kind(channels),
                "settings": dataclasses.asdict(train_settings(config, repeat)),
                "folds": tr.folds, "val_fraction": tr.val_fraction, "labels": [tr.negative_label, tr.positive_label],
                "fold": fold.index, "split": split_hash(fold), "data": data_hash,
                **({"cv": tr.cv} if tr.cv != "kfold" else {}), **({"repeat": repeat} if repeat else {}),
                **(extra or {})}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:20]


def _scan_set(scans: tuple[Scan, ...], rows: dict[str, int]) -> ScanSet:
    return ScanSet(np.array([rows[s.key] for s in scans], dtype=np.int64),
                   np.array([s.target for s in scans], dtype=np.int64))


def _build_model(name: str, shape: tuple[int, ...], channels: int) -> nn.Module:
    try:
        return MODELS[name](shape, channels)
    except ValueError as exc:
        raise InputError(f"--model {name}: {exc}") from exc


def _predictions(model_name: str, fold: Fold, probability: np.ndarray, repeat: int | None) -> pd.DataFrame:
    """A fold's test predictions (a ``repeat`` column after ``fold`` with several repeats, else none)."""
    table = pd.DataFrame(prediction_rows(model_name, fold.index, fold.test, probability),
                         columns=list(PREDICTION_COLUMNS))
    if repeat is not None:
        table.insert(1, "repeat", repeat)
    return table


def _write_state_dict(path: Path, model: nn.Module) -> None:
    with atomic_path(path) as tmp:
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, tmp)


def _model_card(config: RunConfig, cohort: Cohort, fold: Fold, model: nn.Module, shape: tuple[int, ...],
                result: FoldResult, metrics: dict, key: str, data_hash: str, device: torch.device,
                repeat: int) -> dict:
    tr = config.training
    builder = MODELS[tr.model]
    return {
        "Model": tr.model,
        "Architecture": str(model),
        "ArchitectureNotes": (sys.modules[builder.__module__].__doc__ or "").strip(),
        "Parameters": sum(p.numel() for p in model.parameters()),
        "Input": {"Space": cohort.space, "Resolution": parse_resolution(cohort.res_label),
                  "ResLabel": cohort.res_label, "Shape": list(shape), "Channels": list(cohort.channels),
                  "Layout": "N,C,X,Y,Z", "DType": "float32",
                  "Normalisation": NORMALISATION[config.preprocessing.intensity_norm],
                  **({"LogJacobianUnit": LOGJACOBIAN_UNIT} if LOGJACOBIAN in cohort.channels else {})},
        "Output": "logits (N, 2); softmax index 1 = probability of the positive label",
        "Labels": {"0": tr.negative_label, "1": tr.positive_label},
        "LabelColumn": tr.label_column,
        "Fold": fold.index,
        "Folds": tr.folds,
        "CrossValidation": tr.cv,
        "Repeat": repeat,
        "Repeats": tr.repeats,
        "NScans": {name: len(scans) for name, scans in fold.sets().items()},
        "NSubjects": {name: len({s.subject for s in scans}) for name, scans in fold.sets().items()},
        "SubjectsHash": split_hash(fold),
        "DataHash": data_hash,
        "TrainingKey": key,
        "Metrics": metrics,
        "Seed": config.execution.seed,
        "Threads": config.execution.omp_nthreads or torch.get_num_threads(),  # CPU sums depend on it (README)
        "Preset": tr.preset,
        "Training": {**dataclasses.asdict(train_settings(config, repeat)), "val_fraction": tr.val_fraction,
                     "loss": "cross-entropy, class-weighted", "early_stopping": tr.patience > 0,
                     "class_weights": result.class_weights, "device": device.type,
                     "amp": bool(tr.amp and device.type == "cuda")},
        "EpochsRun": result.epochs_run,
        "BestEpoch": result.best_epoch,
        "EarlyStopped": result.early_stopped,
        "WallTimeSeconds": round(result.seconds, 2),
        "Software": software_versions(),
    }


def fit_and_test(config: RunConfig, fold: Fold, volumes: np.ndarray, rows: dict[str, int], key: str,
                 device: torch.device, checkpoint: Path, repeat: int = 0, label: str = ""
                 ) -> tuple[nn.Module, FoldResult, np.ndarray]:
    """Train one fold's network (resumable from ``checkpoint``) and predict its test scans.

    Returns
    -------
    tuple
        The trained model, its :class:`FoldResult` and the test scans' probabilities of the positive class.
    """
    tr = config.training
    check_no_leakage(fold)
    settings = train_settings(config, repeat)
    with deterministic(device, config.execution.omp_nthreads), reuse_cpu_memory(device):
        seed_everything(epoch_seed(settings.seed, fold.index, 0))
        model = _build_model(tr.model, tuple(volumes.shape[2:]), volumes.shape[1]).to(device)
        result = train_fold(model, volumes, _scan_set(fold.train, rows), _scan_set(fold.val, rows), settings,
                            fold.index, device, checkpoint, key,
                            label=f"{tr.model}{label} fold {fold.index + 1}/{tr.folds}")
        test = _scan_set(fold.test, rows)
        logits = predict_logits(model, volumes, test.rows, device, settings.batch_size, settings.amp)
    return model, result, torch.softmax(logits, 1)[:, 1].numpy()


def _train_one(config: RunConfig, cohort: Cohort, fold: Fold, volumes: np.ndarray, rows: dict[str, int],
               data_hash: str, key: str, device: torch.device, repeat: int = 0) -> None:
    """Train, test and write the outputs of one fold (model card last)."""
    tr = config.training
    folder = fold_dir(config, fold.index, repeat)
    check_no_leakage(fold)
    (folder / layout.MODEL_CARD).unlink(missing_ok=True)  # a stale fold is incomplete until retrained
    write_split(folder / layout.SPLIT, fold)
    shape = tuple(volumes.shape[2:])
    model, result, probability = fit_and_test(config, fold, volumes, rows, key, device, folder / layout.CHECKPOINT,
                                              repeat, f" repeat {repeat}" if repeat else "")
    metrics = classification_metrics(np.array([s.target for s in fold.test]), probability)
    _write_state_dict(folder / layout.MODEL_WEIGHTS, model)
    curve = pd.DataFrame({"epoch": np.arange(1, result.epochs_run + 1), **result.history})
    write_tsv(layout.training_curve_table(folder), curve[["epoch", *CURVE_COLUMNS]])
    save_png(training_curve(curve, result.best_epoch, f"{tr.model} fold {fold.index}"),
             layout.training_curve_figure(folder))
    write_tsv(folder / layout.FOLD_PREDICTIONS, _predictions(tr.model, fold, probability,
                                                             repeat if tr.repeats > 1 else None))
    write_json(folder / layout.MODEL_CARD, _model_card(config, cohort, fold, model, shape, result, metrics, key,
                                                       data_hash, device, repeat))
    (folder / layout.CHECKPOINT).unlink(missing_ok=True)
    LOGGER.info("%s fold %d done: best epoch %d of %d, test accuracy %.3f, balanced accuracy %.3f, AUC %.3f",
                tr.model, fold.index, result.best_epoch, result.epochs_run, metrics["accuracy"],
                metrics["balanced_accuracy"], metrics["roc_auc"])


#: What the verdict's interval resamples, by whether the cross-validation was repeated.
INTERVAL_METHOD = {False: "percentile bootstrap over subjects, {n} resamples, 95 %",
                   True: "percentile bootstrap over subjects and, per resample, one of the {r} repeats at random, "
                         "{n} resamples, 95 %"}


def collect_predictions(config: RunConfig) -> pd.DataFrame:
    """Every fold's (and repeat's) out-of-fold test predictions of ``--model``, in repeat and fold order."""
    tr = config.training
    return pd.concat([pd.read_csv(fold_dir(config, k, r) / layout.FOLD_PREDICTIONS, sep="\t",
                                  dtype={"subject": str, "session": str})
                      for r in range(tr.repeats) for k in range(tr.folds)], ignore_index=True)


def write_group_results(config: RunConfig, derivs: Derivatives) -> pd.DataFrame:
    """Collect every fold's test predictions into the group tables and the ROC figure.

    Returns
    -------
    pandas.DataFrame
        This model's rows of ``group/cv_metrics.tsv`` (per fold, mean, sd, pooled with the verdict; per repeat
        too with ``--repeats``).
    """
    tr = config.training
    predictions = collect_predictions(config)
    keys = ["repeat", "fold"] if "repeat" in predictions.columns else ["fold"]
    fold_rows = [{**dict(zip(keys, np.atleast_1d(key).tolist())), "n_test": len(rows),
                  **classification_metrics(rows["target"], rows["probability"])}
                 for key, rows in predictions.groupby(keys if len(keys) > 1 else keys[0], sort=True)]
    table = summarize_folds(tr.model, fold_rows, predictions, config.evaluation.n_bootstrap, config.execution.seed)
    update_table(layout.group_table(derivs.root, layout.CV_METRICS), table, tr.model)
    update_table(layout.group_table(derivs.root, layout.PREDICTIONS), predictions, tr.model)
    first = predictions[predictions["repeat"] == 0] if len(keys) > 1 else predictions
    save_png(roc_curves(first, by="fold", title=f"{tr.model}: ROC per fold (test subjects"
                        f"{', repeat 0' if len(keys) > 1 else ''})", prefix="fold "),
             derivs.group_path("roc", ".png", desc=tr.model))
    mean, sd, pooled = (table[table["fold"] == name].iloc[0] for name in ("mean", "sd", "pooled"))
    LOGGER.info("%s cross-validation (%d folds x %d repeat(s)): balanced accuracy %.3f +- %.3f, AUC %.3f +- %.3f; "
                "pooled AUC %.3f (95%% CI %.3f-%.3f, p = %.2g)", tr.model, tr.folds, tr.repeats,
                mean["balanced_accuracy"], sd["balanced_accuracy"], mean["roc_auc"], sd["roc_auc"],
                pooled["roc_auc"], pooled["roc_auc_ci_low"], pooled["roc_auc_ci_high"], pooled["p_value"])
    write_json(layout.verdict_path(config.models_dir, tr.model), {
        "Model": tr.model, "Folds": tr.folds, "CrossValidation": tr.cv, "Repeats": tr.repeats,
        "NScans": int(pooled["n_test"]), "PooledRocAuc": float(pooled["roc_auc"]),
        "RocAucInterval": [float(pooled["roc_auc_ci_low"]), float(pooled["roc_auc_ci_high"])],
        "IntervalMethod": INTERVAL_METHOD[tr.repeats > 1].format(n=config.evaluation.n_bootstrap, r=tr.repeats),
        "PValue": float(pooled["p_value"]), "PValueMethod": "one-sided Mann-Whitney U on subject-mean scores",
        "BetterThanChance": bool(pooled["better_than_chance"]), "BelowChance": bool(pooled["below_chance"]),
        "TrainingKeys": [read_json(fold_dir(config, k, r) / layout.MODEL_CARD)["TrainingKey"]
                         for r in range(tr.repeats) for k in range(tr.folds)]})
    if pooled["below_chance"]:
        LOGGER.warning("%s: %s", tr.model, BELOW_CHANCE)
    elif not pooled["better_than_chance"]:
        LOGGER.warning("%s is not better than chance: the 95%% interval of its pooled out-of-fold ROC AUC "
                       "(%.3f-%.3f) does not lie above 0.5; its heatmaps explain a model that has not learned to "
                       "separate %s from %s", tr.model, pooled["roc_auc_ci_low"], pooled["roc_auc_ci_high"],
                       tr.positive_label, tr.negative_label)
    return table


def run_training(config: RunConfig, derivs: Derivatives, cohort: Cohort, folds: list[Fold] | None = None,
                 write_results: bool = True) -> list[int]:
    """Train the missing fold models (or only ``--fold K``) and, for a full run, write the group results.

    Parameters
    ----------
    config : RunConfig
        Uses the ``training`` section, ``execution.seed``, ``device``,
        ``omp_nthreads``, ``overwrite`` and ``work_dir``.
    derivs : Derivatives
        The output dataset (group tables go to ``group/``).
    cohort : Cohort
        Scans with targets; only labelled scans are used.
    folds : list of Fold, optional
        The folds to train, as repeat 0 (default: :func:`~adheat_app.training.folds.cohort_folds` of every repeat); the
        permuted-label control passes the real folds with its own labels.
    write_results : bool
        Write the group tables and the verdict (``group/cv_metrics.tsv``, ...) after a full run.

    Returns
    -------
    list of int
        Indices of the completed folds handled by this run.

    Raises
    ------
    InputError
        For cohorts that cannot be cross-validated (see
        :func:`adheat_app.training.folds.check_labels`) or a grid too small for the model.
    """
    config = with_cv(config, cohort)
    tr = config.training
    check_labels(config, cohort)
    labelled = sorted(cohort.labelled, key=lambda s: s.key)
    subjects = {s.subject for s in labelled}
    LOGGER.info("training %s on %d scan(s) of %d subject(s) (%s %d, %s %d scans), %d folds%s%s", tr.model,
                len(labelled), len(subjects), tr.positive_label, sum(s.target == 1 for s in labelled),
                tr.negative_label, sum(s.target == 0 for s in labelled), tr.folds,
                " (one per site)" if tr.cv == "leave-site-out" else "",
                f" x {tr.repeats} repeats" if tr.repeats > 1 else "")
    data_hash = input_key(labelled, cohort.channels)
    repeats = [tr.repeat or 0] if tr.fold is not None else list(range(tr.repeats))
    if folds is not None:  # given folds: one set, trained as repeat 0
        repeats = [0]
    folds = {0: folds} if folds is not None else {r: cohort_folds(config, cohort, r) for r in repeats}
    wanted = [(r, k) for r in repeats for k in ([tr.fold] if tr.fold is not None else range(tr.folds))]
    keys = {(r, k): training_key(config, cohort.channels, folds[r][k], data_hash, r) for r, k in wanted}
    missing = [(r, k) for r, k in wanted if config.execution.overwrite
               or not is_complete(fold_dir(config, k, r) / layout.MODEL_WEIGHTS, TrainingKey=keys[r, k])]
    for r, k in sorted(set(wanted) - set(missing)):
        LOGGER.info("%s fold %d%s: complete model found in %s, skipping", tr.model, k,
                    f" of repeat {r}" if r else "", fold_dir(config, k, r))
    if missing:
        device = resolve_device(config)
        volumes = load_inputs(cohort.scans, cohort.channels, config.work_dir)
        rows = {s.key: i for i, s in enumerate(cohort.scans)}
        LOGGER.info("training fold(s) %s on %s", ", ".join(f"{k}" if not r else f"{k} (repeat {r})"
                                                           for r, k in missing), device)
        for r, k in missing:
            tic = time.perf_counter()
            _train_one(config, cohort, folds[r][k], volumes, rows, data_hash, keys[r, k], device, r)
            LOGGER.info("%s fold %d%s took %.1f s", tr.model, k, f" of repeat {r}" if r else "",
                        time.perf_counter() - tic)
    if tr.fold is None and write_results:
        write_group_results(config, derivs)
    return [k for r, k in wanted if r == repeats[0]]
