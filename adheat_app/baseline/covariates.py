"""Covariate-only control classifiers: can site, age or sex alone tell the classes apart?

A CNN reaches a high cross-validated ROC AUC just as well by recognising
something other than the disease that differs between the classes: the
scanner of a cohort whose AD subjects come mostly from one site, age, sex or
head size. For every ``--covariates`` column of ``participants.tsv`` this
module cross-validates, on the CNN's folds, a logistic regression
(scikit-learn) that reads that column alone, and writes its out-of-fold
predictions and metrics as rows of model ``covariate-<column>`` in
``group/cv_metrics.tsv`` and ``group/predictions.tsv``, through the same
functions as the CNN and the SVM (:mod:`adheat_app.training.metrics`): pooled
ROC AUC, bootstrap interval and verdict against chance. A covariate model
better than chance marks a confound the CNN may have learned instead of the
disease; the group report warns about it and sets its ROC AUC beside the
CNN's. With two or more usable columns a joint model reads them all together
(model ``covariate-all``, same folds): confounds that each predict a little may
predict well together. Whether the CNN's out-of-fold score adds anything to
the covariates is the nested test of :mod:`adheat_app.baseline.nested`.

A column is categorical (one-hot) when ``participants.json`` gives it
``Levels`` (as BIDS asks of categorical columns), when a value is not a number,
or when its numbers are codes with leading zeros (``002``, ``941``); otherwise
it is numeric, standardised with the fold's training subjects. Numbered sites
without ``Levels`` are therefore read as numbers; the log says how each column
was read.
Missing values become their own category, or the training median. Columns
absent from ``participants.tsv``, or with one value among the labelled
subjects, are skipped with a log message. The fits take milliseconds, so a
rerun recomputes them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from adheat_app.bids import Derivatives, read_participants
from adheat_app.cohort import Scan
from adheat_app.config import RunConfig, TrainingOptions
from adheat_app.errors import InputError
from adheat_app.layout import CV_METRICS, PREDICTIONS, group_table, participants_sidecar, participants_table

LOGGER = logging.getLogger(__name__)

#: Model names of the covariate classifiers in the group tables: ``covariate-<column>``.
PREFIX = "covariate-"
#: Model name of the joint covariate model (every usable column together).
JOINT = f"{PREFIX}all"


def is_covariate_model(model: str) -> bool:
    """Whether a model name of the group tables is a covariate-only control."""
    return str(model).startswith(PREFIX)


def covariate_label(model: str) -> str:
    """What a covariate model reads, in words: its column, or ``the covariates together`` for :data:`JOINT`."""
    return "the covariates together" if model == JOINT else str(model).removeprefix(PREFIX)


def covariate_claim(model: str) -> str:
    """The subject of "... separate(s) the classes" for a covariate model: ``site alone separates``, or ``the
    covariates together separate`` for :data:`JOINT`."""
    return f"{covariate_label(model)} {'separate' if model == JOINT else 'alone separates'}"


def is_categorical(values: pd.Series, sidecar: dict) -> bool:
    """Whether a ``participants.tsv`` column is categorical (see the module docstring)."""
    if "Levels" in sidecar:
        return True
    present = values.dropna().astype(str).str.strip()
    if pd.to_numeric(present, errors="coerce").isna().any():
        return True
    return bool(present.str.fullmatch(r"0\d+").any())


def _wanted(config: RunConfig) -> list[str]:
    """The ``--covariates`` columns (none for ``--covariates none``)."""
    return [c for c in config.training.covariates if c.lower() != "none"]


def check_covariates(config: RunConfig) -> None:
    """Refuse ``--covariates`` columns given on the command line that ``participants.tsv`` lacks.

    The default columns (``age sex site``) are tested where present; columns a user names must exist, so that a
    typo is not silently left untested.

    Raises
    ------
    InputError
        Naming the file, the missing columns and the columns it has.
    """
    wanted = _wanted(config)
    if tuple(config.training.covariates) == TrainingOptions().covariates or not wanted:
        return
    participants = read_participants(config.bids_dir)
    missing = [c for c in wanted if c not in participants.columns]
    if missing:
        raise InputError(f"{participants_table(config.bids_dir)} has no column{'s' if len(missing) > 1 else ''} "
                         f"{', '.join(map(repr, missing))} "
                         f"named by --covariates (columns: {', '.join(participants.columns)}); fix --covariates or "
                         "pass --covariates none")


def covariate_columns(config: RunConfig, scans: Sequence[Scan]) -> dict[str, tuple[pd.Series, bool]]:
    """The usable ``--covariates`` columns: per column, its value for each scan and whether it is categorical."""
    wanted = _wanted(config)
    if not wanted:
        return {}
    participants = read_participants(config.bids_dir)
    sidecar_path = participants_sidecar(config.bids_dir)
    sidecars = json.loads(sidecar_path.read_text(encoding="utf-8")) if sidecar_path.is_file() else {}
    columns = {}
    for name in wanted:
        if name not in participants.columns or name == config.training.label_column:
            LOGGER.info("covariate %r: not a column of participants.tsv (or the label column); not tested", name)
            continue
        values = pd.Series([participants[name].get(s.subject) for s in scans], dtype=object)
        if values.dropna().nunique() < 2:
            LOGGER.info("covariate %r: one value among the labelled subjects; not tested", name)
            continue
        columns[name] = (values, is_categorical(values, sidecars.get(name, {})))
    return columns


def encoder(categorical: bool, drop_first: bool = False) -> Pipeline:
    """One column's encoding: categorical -> one-hot (missing values a category of their own), numeric -> median
    imputation and standardisation; ``drop_first`` drops a level (for an unpenalised model with an intercept)."""
    if categorical:
        return make_pipeline(SimpleImputer(strategy="constant", fill_value="n/a"),
                             OneHotEncoder(handle_unknown="ignore", drop="first" if drop_first else None))
    return make_pipeline(SimpleImputer(strategy="median"), StandardScaler())


def covariate_features(columns: dict[str, tuple[pd.Series, bool]]) -> pd.DataFrame:
    """The covariate columns as one table: categorical columns as objects, numeric ones as floats."""
    return pd.DataFrame({name: values.astype(object).where(values.notna(), np.nan).to_numpy(object) if categorical
                         else pd.to_numeric(values).to_numpy(float) for name, (values, categorical) in columns.items()})


def covariate_classifier(kinds: dict[str, bool], seed: int) -> Pipeline:
    """The logistic regression on the named columns (``{column: categorical}``) of a :func:`covariate_features`
    table, each column encoded by :func:`encoder`."""
    transformer = ColumnTransformer([(name, encoder(categorical), [name]) for name, categorical in kinds.items()])
    return make_pipeline(transformer, LogisticRegression(random_state=seed))


def fold_scans(folds: Sequence) -> list[Scan]:
    """Every scan of the folds, once, in fold order (the labelled scans of a cross-validation)."""
    return list(dict.fromkeys(s for f in folds for part in (f.train, f.val, f.test) for s in part))


def _cross_validate(config: RunConfig, derivs: Derivatives, folds: Sequence, scans: list[Scan],
                    features: pd.DataFrame, kinds: dict[str, bool], model_name: str) -> pd.Series:
    """Cross-validate the logistic regression on ``kinds``' columns, write its rows; return its pooled row."""
    from adheat_app.training.metrics import classification_metrics, prediction_rows, summarize_folds, update_table

    row = {s.key: i for i, s in enumerate(scans)}
    seed = config.execution.seed
    fold_rows, predictions = [], []
    for fold in folds:
        train = [row[s.key] for s in (*fold.train, *fold.val)]
        test = [row[s.key] for s in fold.test]
        classifier = covariate_classifier(kinds, seed + fold.index)
        classifier.fit(features.iloc[train], np.array([scans[i].target for i in train]))
        probability = classifier.predict_proba(features.iloc[test])[:, 1]
        fold_rows.append({"fold": fold.index, "n_test": len(test),
                          **classification_metrics([scans[i].target for i in test], probability)})
        predictions += prediction_rows(model_name, fold.index, [scans[i] for i in test], probability)
    predictions = pd.DataFrame(predictions)
    summary = summarize_folds(model_name, fold_rows, predictions, config.evaluation.n_bootstrap, seed)
    update_table(group_table(derivs.root, CV_METRICS), summary, model_name)
    update_table(group_table(derivs.root, PREDICTIONS), predictions, model_name)
    return summary[summary["fold"] == "pooled"].iloc[0]


def run_covariates(config: RunConfig, derivs: Derivatives, folds: Sequence) -> None:
    """Cross-validate each covariate alone, and all together, on the CNN's folds; write their rows of the group
    tables.

    Parameters
    ----------
    config : RunConfig
        Run configuration (``--covariates``, label column, seed, bootstrap resamples).
    derivs : Derivatives
        Output dataset.
    folds : sequence
        Cross-validation folds (:class:`adheat_app.training.Fold`); validation scans are training scans here.
    """
    from adheat_app.training.metrics import remove_models

    scans = fold_scans(folds)
    columns = covariate_columns(config, scans)
    features = covariate_features(columns)
    models = {f"{PREFIX}{name}": {name: categorical} for name, (_, categorical) in columns.items()}
    if len(columns) > 1:
        models[JOINT] = {name: categorical for name, (_, categorical) in columns.items()}
    for table in (CV_METRICS, PREDICTIONS):  # models no longer asked for: drop their old rows
        remove_models(group_table(derivs.root, table), lambda model: is_covariate_model(model) and model not in models)
    for model_name, kinds in models.items():
        pooled = _cross_validate(config, derivs, folds, scans, features, kinds, model_name)
        LOGGER.info("%s (%s): pooled ROC AUC %.3f [%.3f, %.3f]%s", covariate_label(model_name),
                    ", ".join("categorical" if c else "numeric" for c in kinds.values()), pooled["roc_auc"],
                    pooled["roc_auc_ci_low"], pooled["roc_auc_ci_high"], ": better than chance, a possible confound"
                    if pooled["better_than_chance"] else "")
