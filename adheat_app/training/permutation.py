"""Label-permutation test with retraining (``--permutation-test N``; Ojala & Garriga 2010, test 1).

The bootstrap interval of the verdict treats the out-of-fold scores as
independent, but cross-validated scores share training data. The permutation
test allows for that dependence: it reruns the whole cross-validation (new
stratified folds on the permuted labels, every fold retrained with the
settings and seeds of the real run) on ``N`` permutations of the diagnoses,
and compares the pooled out-of-fold ROC AUC of the real labels (repeat 0's,
so each permutation runs one cross-validation) with the permuted ones:
``p = (1 + #{AUC_perm >= AUC}) / (1 + N)``, exact under exchangeability of
the labels. Labels are permuted across subjects (a subject's sessions keep
one label); with ``--cv leave-site-out`` within each site, so every site
keeps both classes and the null keeps the sites' class balance.

Cost: ``N`` times the training of one cross-validation (recorded as
``Seconds`` in the sidecar). ``group/permutation_test.tsv``
(:data:`adheat_app.layout.PERMUTATION_TEST`) holds one row per finished
permutation (a rerun with the same settings and data resumes after the last);
its JSON sidecar the p-value, the null distribution's mean and 95 % range
(its chance level: 0.5) and the cost; ``models/<model>/verdict.json`` gains
``PermutationPValue``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import time

import numpy as np
import pandas as pd

from adheat_app.bids import Derivatives
from adheat_app.cohort import Cohort
from adheat_app.config import RunConfig
from adheat_app.inputs import input_key, load_inputs
from adheat_app.io import read_json, write_json, write_tsv
from adheat_app.layout import PERMUTATION_TEST, group_table, permutation_checkpoint, sidecar_path, verdict_path
from adheat_app.training.device import resolve_device
from adheat_app.training.folds import cohort_folds, subject_sites, with_cv
from adheat_app.training.metrics import CHANCE_AUC, classification_metrics
from adheat_app.training.runner import collect_predictions, fit_and_test, training_key

LOGGER = logging.getLogger(__name__)

COLUMNS = ("permutation", "roc_auc", "seconds", "key")


def permuted_cohort(cohort: Cohort, seed: int, strata: dict[str, str] | None = None) -> Cohort:
    """``cohort`` with its labelled subjects' diagnoses permuted (sessions keep their subject's; ``strata``:
    permute within each stratum, e.g. site, of the subjects)."""
    labels = {s.subject: (s.diagnosis, s.target) for s in cohort.labelled}
    subjects = sorted(labels)
    rng = np.random.default_rng(seed)
    permuted: dict[str, tuple] = {}
    for stratum in sorted({(strata or {}).get(s, "") for s in subjects}):
        members = [s for s in subjects if (strata or {}).get(s, "") == stratum]
        for subject, source in zip(members, rng.permutation(members)):
            permuted[subject] = labels[source]
    scans = tuple(dataclasses.replace(s, diagnosis=permuted[s.subject][0], target=permuted[s.subject][1])
                  if s.subject in permuted else s for s in cohort.scans)
    return dataclasses.replace(cohort, scans=scans)


def permutation_p_value(observed: float, null: np.ndarray) -> float:
    """``(1 + #{null >= observed}) / (1 + len(null))`` (Ojala & Garriga 2010, eq. 1)."""
    return float((1 + np.sum(np.asarray(null) >= observed)) / (1 + len(null)))


def run_permutation_test(config: RunConfig, derivs: Derivatives, cohort: Cohort) -> dict:
    """Run the ``--permutation-test N`` permutations still missing; write the table, its sidecar and the verdict.

    Needs the trained folds of repeat 0 (their pooled out-of-fold ROC AUC is the observed statistic).

    Returns
    -------
    dict
        The sidecar: observed ROC AUC, p-value, null summary, cost.
    """
    config = with_cv(config, cohort)
    tr, seed = config.training, config.execution.seed
    n = tr.permutation_test
    observed_rows = collect_predictions(config.replace("training", repeats=1))
    observed = classification_metrics(observed_rows["target"], observed_rows["probability"])["roc_auc"]
    path = group_table(derivs.root, PERMUTATION_TEST)
    labelled = sorted(cohort.labelled, key=lambda s: s.key)
    data_hash = input_key(labelled, cohort.channels)
    strata = subject_sites(config.bids_dir) if tr.cv == "leave-site-out" else None
    done = pd.read_csv(path, sep="\t", dtype={"key": str}) if path.is_file() else pd.DataFrame(columns=COLUMNS)
    rows, volumes, device = [], None, None
    for i in range(1, n + 1):
        permuted = permuted_cohort(cohort, int(np.random.SeedSequence([seed, i]).generate_state(1)[0]), strata)
        folds = cohort_folds(config, permuted)
        keys = [training_key(config, cohort.channels, fold, data_hash, extra={"permutation": i}) for fold in folds]
        key = hashlib.sha256(",".join(keys).encode()).hexdigest()[:20]
        previous = done[(done["permutation"] == i) & (done["key"] == key)]
        if len(previous):
            rows.append(previous.iloc[0].to_dict())
            continue
        if volumes is None:
            device = resolve_device(config)
            volumes = load_inputs(cohort.scans, cohort.channels, config.work_dir)
        index = {s.key: j for j, s in enumerate(cohort.scans)}
        tic = time.perf_counter()
        targets, scores = [], []
        for fold, fold_key in zip(folds, keys):
            checkpoint = permutation_checkpoint(config.work_dir, tr.model, i, fold.index)
            _, _, probability = fit_and_test(config, fold, volumes, index, fold_key, device, checkpoint,
                                             label=f" permutation {i}/{n}")
            checkpoint.unlink(missing_ok=True)
            targets += [s.target for s in fold.test]
            scores += list(probability)
        auc = classification_metrics(targets, scores)["roc_auc"]
        rows.append({"permutation": i, "roc_auc": auc, "seconds": round(time.perf_counter() - tic, 2), "key": key})
        write_tsv(path, pd.DataFrame(rows, columns=list(COLUMNS)))
        LOGGER.info("permutation %d/%d: pooled ROC AUC %.3f (real labels %.3f)", i, n, auc, observed)
    table = pd.DataFrame(rows, columns=list(COLUMNS))
    write_tsv(path, table)
    null = table["roc_auc"].to_numpy(float)
    low, high = np.percentile(null, [2.5, 97.5]) if n else (float("nan"), float("nan"))
    summary = {
        "Model": tr.model, "Permutations": n, "ObservedRocAuc": float(observed),
        "Statistic": "pooled out-of-fold ROC AUC of repeat 0",
        "PValue": permutation_p_value(observed, null),
        "PValueMethod": "(1 + #{AUC_perm >= AUC}) / (1 + N), Ojala & Garriga 2010",
        "Permuted": "diagnoses across subjects" + (" within each site" if strata else ""),
        "ChanceRocAuc": CHANCE_AUC, "NullMean": float(np.mean(null)) if n else float("nan"),
        "Null95": [float(low), float(high)],
        "Seconds": float(table["seconds"].sum()), "FoldsTrained": n * tr.folds,
        "Cost": f"{n} x the training of one {tr.folds}-fold cross-validation",
    }
    write_json(sidecar_path(path), summary)
    verdict_file = verdict_path(config.models_dir, tr.model)
    if verdict_file.is_file():
        write_json(verdict_file, {**read_json(verdict_file), "PermutationPValue": summary["PValue"],
                                  "Permutations": n})
    LOGGER.info("%s permutation test: p = %.3g with %d permutations (null ROC AUC mean %.3f, 95%% range "
                "%.3f-%.3f), %.0f s of training", tr.model, summary["PValue"], n, summary["NullMean"], low, high,
                summary["Seconds"])
    return summary
