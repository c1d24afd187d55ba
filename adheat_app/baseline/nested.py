"""Does the CNN's out-of-fold score add to the covariates? Nested logistic models and a likelihood-ratio test.

A CNN better than chance may only have learned what the covariates
(``--covariates``: age, sex, site) already tell. :func:`nested_test` fits, on
one row per labelled subject, two unpenalised logistic regressions of the
diagnosis: on the covariates (encoded as in :mod:`.covariates`, one level of
each categorical column dropped), and on the covariates plus the CNN's
standardised out-of-fold logit (the mean over the subject's sessions and
repeats). The likelihood-ratio statistic ``2 (ll_with_cnn - ll_covariates)``
is chi-squared with 1 degree of freedom when the CNN adds nothing (chance
level: its mean, 1; the p-value is uniform); the odds ratio per SD of the CNN
logit comes with its Wald 95 % interval (chance: 1). The test answers a
question the cross-validated AUC difference answers only with a second
cross-validation of the combined model and a correlated-AUC interval of low
power (docs/training.md). Its caveat: out-of-fold scores of different fold
models are treated as fixed predictors, as in any stacked test.

:func:`run_nested_test` writes one row to ``group/covariates_nested_test.tsv``
(:data:`adheat_app.layout.NESTED_TEST`), or removes a stale one when there
is no covariate or no CNN prediction.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy.stats import chi2, norm
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LogisticRegression

from adheat_app.baseline.covariates import covariate_columns, covariate_features, encoder, fold_scans
from adheat_app.bids import Derivatives
from adheat_app.config import RunConfig
from adheat_app.io import write_tsv
from adheat_app.layout import NESTED_TEST, PREDICTIONS, group_table

LOGGER = logging.getLogger(__name__)

#: Two-sided level of the test and of the odds ratio's interval.
ALPHA = 0.05
#: Probabilities are clipped to [EPS, 1 - EPS] before the logit.
EPS = 1e-6


def _fit(design: np.ndarray, target: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Unpenalised logistic regression with intercept: log-likelihood, coefficients, their covariance (Wald)."""
    model = LogisticRegression(C=np.inf, max_iter=5000).fit(design, target)  # unpenalised
    p = np.clip(model.predict_proba(design)[:, 1], 1e-12, 1 - 1e-12)
    loglik = float(np.sum(target * np.log(p) + (1 - target) * np.log(1 - p)))
    full = np.column_stack([np.ones(len(design)), design])
    hessian = full.T @ (full * (p * (1 - p))[:, None])
    return loglik, np.concatenate([model.intercept_, model.coef_[0]]), np.linalg.pinv(hessian)


def nested_test(target: np.ndarray, covariates: pd.DataFrame, kinds: dict[str, bool], score: np.ndarray) -> dict:
    """Likelihood-ratio test of the CNN score beyond the covariates, on one row per subject.

    Parameters
    ----------
    target : array of {0, 1}
        Diagnosis per subject.
    covariates : pandas.DataFrame
        Covariate columns per subject (:func:`adheat_app.baseline.covariates.covariate_features`).
    kinds : dict
        ``{column: categorical}`` of the columns used.
    score : array of float
        The CNN's out-of-fold logit per subject.

    Returns
    -------
    dict
        ``n_subjects``, ``loglik_covariates``, ``loglik_with_cnn``, ``lr_statistic``, ``df`` (1),
        ``lr_chance`` (1, the statistic's mean under the null), ``p_value``, ``odds_ratio`` (per SD of the
        score) with ``odds_ratio_ci_low``/``odds_ratio_ci_high`` (Wald 95 %), ``odds_ratio_chance`` (1) and
        ``adds_to_covariates`` (``p_value < 0.05``).
    """
    target = np.asarray(target, dtype=int)
    transformer = ColumnTransformer([(name, encoder(categorical, drop_first=True), [name])
                                     for name, categorical in kinds.items()], sparse_threshold=0)
    base = np.asarray(transformer.fit_transform(covariates), dtype=float)
    z = (score - score.mean()) / (score.std() or 1.0)
    loglik0, _, _ = _fit(base, target)
    loglik1, coef, cov = _fit(np.column_stack([base, z]), target)
    statistic = max(0.0, 2 * (loglik1 - loglik0))
    se = float(np.sqrt(max(cov[-1, -1], 0.0)))
    half = norm.ppf(1 - ALPHA / 2) * se
    p_value = float(chi2.sf(statistic, 1))
    return {"n_subjects": len(target), "loglik_covariates": loglik0, "loglik_with_cnn": loglik1,
            "lr_statistic": statistic, "df": 1, "lr_chance": 1.0, "p_value": p_value,
            "odds_ratio": float(np.exp(coef[-1])), "odds_ratio_ci_low": float(np.exp(coef[-1] - half)),
            "odds_ratio_ci_high": float(np.exp(coef[-1] + half)), "odds_ratio_chance": 1.0,
            "adds_to_covariates": bool(p_value < ALPHA)}


def subject_scores(predictions: pd.DataFrame) -> pd.Series:
    """Each subject's mean out-of-fold logit over its sessions (and repeats), from ``predictions.tsv`` rows."""
    p = predictions["probability"].to_numpy(float).clip(EPS, 1 - EPS)
    logit = pd.Series(np.log(p / (1 - p)), index=predictions["subject"].astype(str).to_numpy())
    return logit.groupby(level=0).mean()


def run_nested_test(config: RunConfig, derivs: Derivatives, folds: Sequence) -> None:
    """Test whether the CNN adds to the covariates and write :data:`~adheat_app.layout.NESTED_TEST`.

    Parameters
    ----------
    config : RunConfig
        ``--covariates``; ``--model`` names the CNN whose rows of ``group/predictions.tsv`` are read.
    derivs : Derivatives
        Output dataset.
    folds : sequence
        The cross-validation folds (:class:`adheat_app.training.Fold`): their scans are the labelled ones.
    """
    path = group_table(derivs.root, NESTED_TEST)
    model = config.training.model
    scans = fold_scans(folds)
    columns = covariate_columns(config, scans)
    predictions = group_table(derivs.root, PREDICTIONS)
    cnn = pd.DataFrame()
    if predictions.is_file():
        cnn = pd.read_csv(predictions, sep="\t", dtype={"subject": str, "session": str})
        cnn = cnn[cnn["model"] == model]
    if not columns or cnn.empty:
        path.unlink(missing_ok=True)
        LOGGER.info("nested test of %s beyond the covariates: %s; not run", model,
                    "no covariate to test" if not columns else f"no out-of-fold prediction of {model}")
        return
    first: dict[str, int] = {}
    for i, scan in enumerate(scans):
        first.setdefault(scan.subject, i)
    scores = subject_scores(cnn).reindex(list(first)).to_numpy(float)
    rows = [i for i, score in zip(first.values(), scores) if np.isfinite(score)]
    result = nested_test(np.array([scans[i].target for i in rows]), covariate_features(columns).iloc[rows],
                         {name: categorical for name, (_, categorical) in columns.items()},
                         scores[np.isfinite(scores)])
    write_tsv(path, pd.DataFrame([{"model": model, "covariates": ",".join(columns), **result}]))
    LOGGER.info("%s beyond %s: likelihood-ratio %.2f (chance 1), p = %.2g, odds ratio per SD %.2f [%.2f, %.2f]%s",
                model, ", ".join(columns), result["lr_statistic"], result["p_value"], result["odds_ratio"],
                result["odds_ratio_ci_low"], result["odds_ratio_ci_high"],
                ": the CNN adds to the covariates" if result["adds_to_covariates"] else
                ": no evidence that the CNN adds to the covariates")
