"""Benchmark: SmoothGrad's defaults and LRP's rules, against IG and Saliency, on a planted cohort (localisation).

Simulates a cohort with planted atrophy and writes its template-space images
directly (the simulator's "oracle" preprocessing: no registration, one
intensity channel), trains the default model with subject-level folds, then
derives the out-of-fold maps of every variant through the product's heatmap
runner (IG, Saliency, SmoothGrad at several noise levels and sample counts,
LRP alpha-beta and the ``epsilonplusflat`` composite) and scores each AD
subject's absolute map against the planted truth (probability > 0.5) inside the
brain: ROC AUC (chance 0.5) and the relevance ratio (relevance per voxel inside
the region over the rest, 1 = none), each as the mean over AD subjects with a
95 % bootstrap interval over subjects. ``|input|`` (the scan's own magnitude) is
the trivial competitor. Also prints seconds per subject of each variant. Not a
test: numbers depend on the cohort draw and the machine.

Usage::

    python benchmarks/method_choice.py [--subjects 24] [--resolution 4] [--folds 3] [--steps 600] [--seed 1]
                                       [--keep DIR]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
from sklearn.metrics import roc_auc_score

from adheat_app import simulate
from adheat_app.attribution.runner import run_heatmaps
from adheat_app.bids import Derivatives
from adheat_app.cohort import load_cohort
from adheat_app.config import build_config
from adheat_app.layout import heatmap_path
from adheat_app.training import run_training

BOOTSTRAP = 1000
#: (row label, method, heatmap options) of every variant scored.
VARIANTS = (
    ("IG", "IG", {}),
    ("Saliency", "Saliency", {}),
    *((f"SmoothGrad n=25 noise={level}", "SmoothGrad", {"smoothgrad_samples": 25, "smoothgrad_noise": level})
      for level in (0.05, 0.1, 0.15, 0.2)),
    *((f"SmoothGrad n={n} noise=0.15", "SmoothGrad", {"smoothgrad_samples": n, "smoothgrad_noise": 0.15})
      for n in (10, 50)),
    ("LRP alphabeta", "LRP", {"lrp_rule": "alphabeta"}),
    ("LRP epsilonplusflat", "LRP", {"lrp_rule": "epsilonplusflat"}),
)


def interval(values: np.ndarray, seed: int) -> str:
    """Mean and 95 % bootstrap interval over subjects."""
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), (BOOTSTRAP, len(values)))].mean(axis=1)
    return f"{values.mean():.3f} [{np.percentile(means, 2.5):.3f}, {np.percentile(means, 97.5):.3f}]"


def scores(maps: np.ndarray, region: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per map (rows of brain voxels): ROC AUC of |map| against ``region`` and the relevance ratio."""
    absolute = np.abs(maps)
    auc = np.array([roc_auc_score(region, m) for m in absolute])
    total = absolute.sum(axis=1, keepdims=True)
    unit = absolute / np.where(total > 0, total, 1)
    ratio = unit[:, region].mean(axis=1) / unit[:, ~region].mean(axis=1)
    return auc, ratio


def main(argv: list[str] | None = None) -> int:
    """Simulate, train, derive every variant's maps, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=24)
    parser.add_argument("--resolution", type=float, default=4.0)
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=600, help="training steps per fold (--steps)")
    parser.add_argument("--effect-size", type=float, default=0.4)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", type=Path, default=None)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        bids = root / "bids"
        if not (bids / "participants.tsv").is_file():
            simulate.simulate_cohort(bids, n_subjects=args.subjects, resolution=args.resolution, seed=args.seed,
                                     effect_size=args.effect_size, atrophy_model="darkening")
        truth = simulate.build_ground_truth(args.resolution)
        sections = {"execution": {"resolution": args.resolution, "seed": args.seed, "nprocs": 1, "omp_nthreads": 2},
                    "training": {"folds": args.folds, "steps": args.steps}}
        config = build_config(bids, root / "out", ("group",), {}, sections)
        derivs = Derivatives(config.output_dir, bids)
        derivs.initialize()
        specs = simulate.plan_cohort(args.subjects, seed=args.seed, effect_size=args.effect_size,
                                     atrophy_model="darkening")
        inputs = simulate.write_template_space_derivatives(derivs, truth, specs,
                                                           config.preprocessing.intensity_norm, seed=args.seed)
        cohort = load_cohort(config, derivs, inputs)
        tic = time.perf_counter()
        run_training(config, derivs, cohort)
        print(f"training {time.perf_counter() - tic:.0f} s", flush=True)
        brain = truth.template.mask_array().astype(bool)
        region = truth.region[brain] > 0.5
        ad = [s for s in cohort.labelled if s.target == 1]
        scans = np.stack([np.asarray(nib.load(s.image).dataobj, np.float32)[brain] for s in ad])
        auc, ratio = scores(scans, region)
        print("map\troc_auc\tratio\tseconds_per_subject")
        print(f"|input|\t{interval(auc, args.seed)}\t{interval(ratio, args.seed)}\t–", flush=True)
        for label, method, options in VARIANTS:
            variant = config.replace("heatmaps", methods=(method,), **options)
            tic = time.perf_counter()
            run_heatmaps(variant, derivs, cohort)
            seconds = (time.perf_counter() - tic) / len(cohort.scans)
            maps = np.stack([np.asarray(nib.load(heatmap_path(derivs.root, s, cohort.space, cohort.res_label,
                                                              method)).dataobj, np.float32)[brain] for s in ad])
            auc, ratio = scores(maps, region)
            print(f"{label}\t{interval(auc, args.seed)}\t{interval(ratio, args.seed)}\t{seconds:.2f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
