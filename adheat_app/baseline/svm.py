"""Linear-SVM baseline on the CNN's folds: metrics, out-of-fold predictions, weights and activation patterns.

Wang et al. (2023) compare CNN heatmaps with the activation patterns of a
linear SVM. For each cross-validation fold (the same subjects as the CNN's),
this module

1. takes the template-brain-mask voxels of the fold's training scans (the
   CNN's ``train`` and ``val`` sets: the SVM has no early stopping, so it
   trains on both) and z-scores every voxel with a scaler fit on those scans only;
2. chooses ``C`` from :data:`C_GRID` by an inner cross-validation grouped by
   subject and stratified by diagnosis (mean balanced accuracy of the inner
   test folds; ties go to the smaller ``C``);
3. fits ``SVC(kernel="precomputed")`` on the linear kernel ``Z Z^T`` (an
   ``n x n`` matrix, so the voxel count only enters one matrix product) and
   recovers the weights ``w = sum_i alpha_i y_i z_i``;
4. turns the decision value ``f`` into a probability with Platt scaling,
   ``P = 1 / (1 + exp(-a f))``, the slope ``a`` fit to the inner-CV
   out-of-fold decision values of the chosen ``C`` (never to the fold's test
   scans); the intercept is fixed at 0, so ``P >= 0.5`` exactly where the SVM
   decides positive;
5. computes the activation pattern ``A = cov(Z) w / var(w^T z)`` over the
   fold's training scans (:func:`adheat_app.baseline.patterns.activation_pattern`).

Outputs: rows of model ``SVM`` in ``group/cv_metrics.tsv`` and
``group/predictions.tsv`` (through :mod:`adheat_app.training.metrics`, as the
CNN), and under ``group/`` the mean over folds of the activation patterns
(``desc-SVM_pattern``) and of the unit-norm weight vectors
(``desc-SVM_weights``), each with a JSON sidecar. Both maps are in the units of
the z-scored features (voxel value divided by its training-set standard
deviation). The features are the voxels of every input channel (``--input``,
:mod:`adheat_app.inputs`); with several channels, each map is the sum of its
channels' maps, and each channel's map is written too (``desc-SVM<channel>``).
A rerun with the same images, folds and parameters is skipped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from scipy import optimize, special
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from adheat_app.baseline.patterns import activation_pattern
from adheat_app.bids import Derivatives, is_complete, software_versions
from adheat_app.cohort import Cohort, Scan
from adheat_app.config import RunConfig
from adheat_app.templates import Template, get_template, parse_resolution
from adheat_app.inputs import channel_paths, input_key, input_kind, load_inputs
from adheat_app.layout import CV_METRICS, PREDICTIONS, MapName, group_table

LOGGER = logging.getLogger(__name__)

MODEL = "SVM"
#: Candidate values of the SVM's C (z-scored voxels: small values regularise).
C_GRID: tuple[float, ...] = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)
#: Inner cross-validation folds (fewer when the training set has fewer subjects per class).
INNER_FOLDS = 3


def _balanced_accuracy(y: np.ndarray, decision: np.ndarray) -> float:
    predicted = decision > 0
    return float(np.mean([np.mean(predicted[y == 1]), np.mean(~predicted[y == 0])]))


def _inner_splits(y: np.ndarray, groups: np.ndarray, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified, subject-grouped inner splits of a training set."""
    per_class = min(len(set(groups[y == c])) for c in (0, 1))
    n_splits = min(INNER_FOLDS, per_class)
    if n_splits < 2:
        raise ValueError("the SVM needs at least 2 training subjects of each class per fold")
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    return list(splitter.split(np.zeros(len(y)), y, groups))


def _platt(decision: np.ndarray, y: np.ndarray) -> float:
    """Slope ``a > 0`` of the sigmoid ``1 / (1 + exp(-a f))`` of largest likelihood on decision values ``f``.

    The intercept is fixed at 0, so P >= 0.5 exactly where the SVM decides
    positive (with a few dozen scans a free intercept moves the threshold more
    by noise than by calibration), and the slope is kept positive (searched in
    ``[1e-4, 1e4]``), so noisy inner decision values can flatten the
    probabilities towards 0.5 but never invert the classifier.
    """
    sign = np.where(np.asarray(y) == 1, 1.0, -1.0)

    def loss(log_slope: float) -> float:
        return float(np.sum(np.logaddexp(0.0, -sign * np.exp(log_slope) * decision)))

    best = optimize.minimize_scalar(loss, bounds=(np.log(1e-4), np.log(1e4)), method="bounded")
    return float(np.exp(best.x))


def fit_fold(features: np.ndarray, y: np.ndarray, groups: np.ndarray, seed: int,
             c_grid: Sequence[float] = C_GRID) -> dict:
    """Fit the linear SVM of one fold, choosing C by inner grouped cross-validation.

    Parameters
    ----------
    features : numpy.ndarray
        Training scans by voxels (raw intensities).
    y : numpy.ndarray
        Targets (0/1).
    groups : numpy.ndarray
        Subject of each scan (sessions of a subject stay together).
    seed : int
        Seed of the inner splits.
    c_grid : sequence of float
        Candidate C values.

    Returns
    -------
    dict
        ``scaler``, ``weights`` (in z-scored feature space), ``intercept``,
        ``platt`` (sigmoid slope), ``C``, ``inner_scores`` (per C),
        ``pattern`` (activation pattern over the training scans).
    """
    scaler = StandardScaler().fit(features)
    z = scaler.transform(features).astype(np.float32)
    kernel = (z @ z.T).astype(np.float64)
    splits = _inner_splits(y, groups, seed)
    scores, decisions = [], []
    for c in c_grid:
        oof = np.zeros(len(y))
        fold_scores = []
        for train, test in splits:
            svc = SVC(C=c, kernel="precomputed").fit(kernel[np.ix_(train, train)], y[train])
            oof[test] = svc.decision_function(kernel[np.ix_(test, train)])
            fold_scores.append(_balanced_accuracy(y[test], oof[test]))
        scores.append(float(np.mean(fold_scores)))
        decisions.append(oof)
    best = int(np.argmax(scores))  # first maximum: the smallest C among ties
    svc = SVC(C=c_grid[best], kernel="precomputed").fit(kernel, y)
    weights = (svc.dual_coef_[0] @ z[svc.support_]).astype(np.float64)
    return {
        "scaler": scaler,
        "weights": weights,
        "intercept": float(svc.intercept_[0]),
        "platt": _platt(decisions[best], y),
        "C": float(c_grid[best]),
        "inner_scores": dict(zip(map(float, c_grid), scores)),
        "pattern": activation_pattern(z, weights, scale=True),
    }


def predict(model: dict, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Decision values and Platt probabilities of the positive class for ``features``."""
    z = model["scaler"].transform(features)
    decision = z @ model["weights"] + model["intercept"]
    return decision, special.expit(model["platt"] * decision)


def _folds_digest(folds: Sequence) -> str:
    """Hash of every fold's train/val/test scan keys (a changed split invalidates outputs)."""
    layout = [[fold.index, *[sorted(s.key for s in getattr(fold, part)) for part in ("train", "val", "test")]]
              for fold in folds]
    return hashlib.sha256(json.dumps(layout).encode()).hexdigest()[:16]


def output_paths(derivs: Derivatives, cohort: Cohort, channel: str | None = None) -> tuple[Path, Path]:
    """Paths of the mean activation pattern and the mean weight map (of one input ``channel``: ``desc-SVM<channel>``;
    default: the sum over channels)."""
    grid = {"space": cohort.space, "res": cohort.res_label, "desc": MapName(MODEL, channel=channel).desc}
    return derivs.group_path("pattern", **grid), derivs.group_path("weights", **grid)


def _has_rows(path: Path, model: str) -> bool:
    if not path.is_file():
        return False
    return bool((pd.read_csv(path, sep="\t", usecols=["model"])["model"] == model).any())


@dataclass
class SvmFolds:
    """What the SVM of every fold gave: metric rows, test predictions, weight vectors, patterns, fold sidecars."""

    rows: list[dict] = field(default_factory=list)
    predictions: list[dict] = field(default_factory=list)
    weights: list[np.ndarray] = field(default_factory=list)
    patterns: list[np.ndarray] = field(default_factory=list)
    info: list[dict] = field(default_factory=list)


def fit_folds(features: np.ndarray, scans: Sequence[Scan], folds: Sequence, seed: int) -> SvmFolds:
    """Fit and test the SVM of every fold (:func:`fit_fold`) on ``features`` (one row per scan of ``scans``)."""
    from adheat_app.training.metrics import classification_metrics, prediction_rows

    row = {s.key: i for i, s in enumerate(scans)}
    out = SvmFolds()
    for fold in folds:
        train = [row[s.key] for s in (*fold.train, *fold.val)]
        test = [row[s.key] for s in fold.test]
        y_train = np.array([scans[i].target for i in train])
        groups = np.array([scans[i].subject for i in train])
        model = fit_fold(features[train], y_train, groups, seed + fold.index)
        _, probability = predict(model, features[test])
        y_test = np.array([scans[i].target for i in test])
        metrics = classification_metrics(y_test, probability)
        out.rows.append({"fold": fold.index, "n_test": len(test), **metrics})
        out.predictions += prediction_rows(MODEL, fold.index, [scans[i] for i in test], probability)
        norm = np.linalg.norm(model["weights"])
        out.weights.append(model["weights"] / norm if norm > 0 else model["weights"])
        out.patterns.append(model["pattern"])
        out.info.append({"Fold": fold.index, "C": model["C"], "InnerBalancedAccuracy": model["inner_scores"],
                         "NTrain": len(train), "NTest": len(test), "PlattSlope": model["platt"]})
        LOGGER.info("SVM fold %d: C=%g, test balanced accuracy %.3f (%d scans)", fold.index, model["C"],
                    metrics["balanced_accuracy"], len(test))
    return out


#: Descriptions of the two maps (:func:`output_paths`: pattern, weights).
MAP_DESCRIPTIONS = (
    "Mean over folds of the activation pattern cov(Z) w / var(w^T z) (Haufe et al. 2014) of the fold's linear SVM "
    "over its training scans; positive values: higher z-scored intensity goes with the positive class.",
    "Mean over folds of the unit-norm linear SVM weight vector w (z-scored features); weights are not interpretable "
    "as locations of effects (Haufe et al. 2014).",
)


def write_maps(derivs: Derivatives, cohort: Cohort, template: Template, fits: SvmFolds, common: dict) -> None:
    """The mean pattern and weight maps (summed over channels, and per channel for several) with sidecars."""
    mask, channels = template.mask_array(), cohort.channels
    for index, maps in enumerate((fits.patterns, fits.weights)):
        description = MAP_DESCRIPTIONS[index]
        per_channel = np.mean(maps, axis=0).reshape(len(channels), -1)
        path = output_paths(derivs, cohort)[index]
        outputs = [(path, per_channel.sum(axis=0), description)]
        if len(channels) > 1:
            outputs += [(output_paths(derivs, cohort, name)[index], values, f"Channel {name} of: {description}")
                        for name, values in zip(channels, per_channel)]
        for target, values, text in outputs:
            volume = np.zeros(template.shape, dtype=np.float32)
            volume[mask] = values
            derivs.write_image(target, nib.Nifti1Image(volume, template.affine),
                               {**common, "Description": text + (" Sum over the input channels." if
                                                                 target == path and len(channels) > 1 else ""),
                                "Method": MODEL, "Signed": True, "Channels": list(channels)})


def _sidecar(derivs: Derivatives, scans: Sequence[Scan], channels: tuple[str, ...], parameters: dict,
             template: Template, fits: SvmFolds, seconds: float) -> dict:
    """The sidecar values shared by every SVM map."""
    return {
        **parameters,
        "Sources": [derivs.source_uri(p) for s in scans for p in channel_paths(s, channels)],
        "Mask": "template brain mask",
        "Template": template.describe(),
        "Folds": fits.info,
        "Features": f"voxel values of the input channels ({', '.join(channels)}) inside the template brain mask, "
                    "z-scored per voxel with mean and SD of each fold's training scans",
        "Classifier": "sklearn.svm.SVC(kernel='precomputed') on the linear kernel; C by inner cross-validation "
                      "grouped by subject",
        "Probability": "Platt scaling through the origin: P = 1/(1+exp(-a f)), slope a fit to the inner-CV "
                       "out-of-fold decision values f",
        "Software": software_versions(),
        "WallTimeSeconds": round(seconds, 3),
    }


def run_svm(config: RunConfig, derivs: Derivatives, cohort: Cohort, folds: Sequence) -> None:
    """Fit the linear SVM on every fold and write its metrics, predictions and maps.

    Parameters
    ----------
    config : RunConfig
        Run configuration (seed, work folder, overwrite).
    derivs : Derivatives
        Output dataset.
    cohort : Cohort
        The preprocessed cohort (its input channels: :attr:`~adheat_app.cohort.Cohort.channels`).
    folds : sequence
        Cross-validation folds: objects with ``index`` and ``train``/``val``/``test``
        tuples of :class:`~adheat_app.cohort.Scan` (:class:`adheat_app.training.Fold`).
    """
    from adheat_app.training.metrics import summarize_folds, update_table

    if not folds:
        LOGGER.warning("no cross-validation folds: skipping the SVM baseline")
        return
    scans: list[Scan] = list(dict.fromkeys(s for f in folds for part in (f.train, f.val, f.test) for s in part))
    channels, seed = cohort.channels, config.execution.seed
    parameters = {"Input": input_kind(channels), "InputsHash": input_key(scans, channels),
                  "FoldsHash": _folds_digest(folds), "Seed": seed, "CGrid": list(C_GRID), "InnerFolds": INNER_FOLDS}
    pattern_path, weights_path = output_paths(derivs, cohort)
    metrics_table, predictions_table = (group_table(derivs.root, name) for name in (CV_METRICS, PREDICTIONS))
    if (not config.execution.overwrite and is_complete(pattern_path, **parameters)
            and is_complete(weights_path, **parameters) and _has_rows(predictions_table, MODEL)
            and _has_rows(metrics_table, MODEL)):
        LOGGER.info("SVM baseline: outputs complete, skipping (--overwrite recomputes)")
        return
    start = time.time()
    template = get_template(parse_resolution(cohort.res_label), space=cohort.space)
    mask = template.mask_array()
    volumes = load_inputs(scans, channels, config.work_dir)
    features = np.stack([np.asarray(volumes[i][:, mask], dtype=np.float32).reshape(-1) for i in range(len(scans))])
    fits = fit_folds(features, scans, folds, seed)
    predictions = pd.DataFrame(fits.predictions)
    update_table(metrics_table, summarize_folds(MODEL, fits.rows, predictions, config.evaluation.n_bootstrap, seed),
                 MODEL)
    update_table(predictions_table, predictions, MODEL)
    write_maps(derivs, cohort, template, fits,
               _sidecar(derivs, scans, channels, parameters, template, fits, time.time() - start))
    LOGGER.info("SVM baseline done in %.1f s: %s", time.time() - start, pattern_path.name)
