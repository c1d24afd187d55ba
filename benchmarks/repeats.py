"""Benchmark: what repeated cross-validation (``--repeats``) adds to the verdict's interval, and what it costs.

Simulates a cohort whose template-space derivatives are written directly (the
simulator's own images, as ``tests/conftest.make_preprocessed_cohort`` does,
without registration), trains ``--repeats R`` cross-validations of the CNN
through the group level's training runner, and prints per repeat the pooled
out-of-fold ROC AUC and the training time, then the SD of the pooled AUC
across repeats, the width of the subject-bootstrap 95 % interval of one
repeat (repeat 0, the plain run), and the width of the combined interval
(subjects and one repeat per resample; :func:`adheat_app.training.metrics.chance_verdict`),
with their ratio. Then the bootstrap itself: seconds of ``chance_verdict``
with the rank-based AUC it uses against scikit-learn's ``roc_auc_score``, and
their ratio. Not a test: numbers depend on the cohort draw and the machine.

Usage::

    python benchmarks/repeats.py [--subjects 20] [--resolution 4] [--folds 3] [--repeats 4] [--steps 120]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from unittest import mock

import numpy as np
from sklearn.metrics import roc_auc_score

from adheat_app import simulate
from adheat_app.bids import Derivatives
from adheat_app.cohort import load_cohort
from adheat_app.config import build_config
from adheat_app.training import metrics, run_training
from adheat_app.training.runner import collect_predictions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subjects", type=int, default=20)
    parser.add_argument("--resolution", type=float, default=4.0)
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--steps", type=int, default=120, help="training budget per fold (the default is 600)")
    parser.add_argument("--effect-size", type=float, default=0.3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        bids = simulate.simulate_cohort(root / "bids", n_subjects=args.subjects, resolution=args.resolution,
                                        seed=args.seed, effect_size=args.effect_size, atrophy_model="darkening")
        sections = {"execution": {"resolution": args.resolution, "seed": args.seed, "nprocs": 1},
                    "training": {"folds": args.folds, "repeats": args.repeats, "steps": args.steps,
                                 "input": "intensity"}}
        config = build_config(bids, root / "out", ("group",), {}, sections)
        derivs = Derivatives(config.output_dir, bids)
        derivs.initialize()
        truth = simulate.build_ground_truth(args.resolution)
        specs = simulate.plan_cohort(args.subjects, seed=args.seed, effect_size=args.effect_size,
                                     atrophy_model="darkening")
        inputs = simulate.write_template_space_derivatives(derivs, truth, specs, "whitematter", seed=args.seed)
        cohort = load_cohort(config, derivs, inputs)
        seconds = []
        for r in range(args.repeats):  # one repeat at a time, to time each
            tic = time.perf_counter()
            for k in range(args.folds):
                run_training(config.replace("training", fold=k, repeat=r), derivs, cohort)
            seconds.append(time.perf_counter() - tic)
        run_training(config, derivs, cohort)
        predictions = collect_predictions(config)
        per_repeat = [metrics.classification_metrics(rows["target"], rows["probability"])["roc_auc"]
                      for _, rows in predictions.groupby("repeat")]
        for r, (auc, s) in enumerate(zip(per_repeat, seconds)):
            print(f"repeat {r}: pooled ROC AUC {auc:.3f}, training {s:.0f} s")
        one = metrics.chance_verdict(predictions[predictions["repeat"] == 0].drop(columns="repeat"), 1000, 0)
        both = metrics.chance_verdict(predictions, 1000, 0)
        width_one = one["roc_auc_ci_high"] - one["roc_auc_ci_low"]
        width_both = both["roc_auc_ci_high"] - both["roc_auc_ci_low"]
        print(f"SD of the pooled ROC AUC across {args.repeats} repeats: {np.std(per_repeat, ddof=1):.3f}")
        print(f"95 % interval, subjects only (repeat 0): [{one['roc_auc_ci_low']:.3f}, {one['roc_auc_ci_high']:.3f}]"
              f" width {width_one:.3f}")
        print(f"95 % interval, subjects and repeats: [{both['roc_auc_ci_low']:.3f}, {both['roc_auc_ci_high']:.3f}]"
              f" width {width_both:.3f}; ratio {width_both / width_one:.2f}")
        tic = time.perf_counter()
        metrics.chance_verdict(predictions, 1000, 0)
        fast = time.perf_counter() - tic
        with mock.patch.object(metrics, "rank_auc", lambda y, p: roc_auc_score(y, p)):
            tic = time.perf_counter()
            metrics.chance_verdict(predictions, 1000, 0)
            plain = time.perf_counter() - tic
        print(f"chance_verdict, 1000 resamples: rank AUC {fast:.2f} s, roc_auc_score {plain:.2f} s; "
              f"ratio {plain / fast:.1f}")


if __name__ == "__main__":
    main()
