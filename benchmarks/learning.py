"""Benchmark: how many subjects the default CNN needs, and whether its heatmaps then find the planted atrophy.

For each cohort size, simulates a cohort with atrophy planted in ``--regions``
(``adheat-simulate``'s generative model), writes its template-space images as
the participant level would (:func:`adheat_app.simulate.write_template_space_derivatives`:
the simulator's own template-space subjects, noise added, normalised with the
default ``--intensity-norm``; no registration, so the numbers isolate the
CNN), then runs the group level's training and heatmap code with the
product's default options (``--model``, step budget, optimiser, folds...;
only ``--methods`` adds patch occlusion, with Rieke et al.'s 40 mm patches
and a 20 mm stride unless ``--occlusion-size``/``--occlusion-stride`` say
otherwise: the default 20 mm / 10 mm patches cost about 60 times as many passes). Prints, per size: the
cross-validated balanced accuracy (mean over folds) and pooled ROC AUC with
its bootstrap interval, training seconds per fold, and for each method the
relevance ratio of the mean out-of-fold AD map: mean |relevance| per voxel
inside the planted region over that in the rest of the brain (each subject's
map scaled to unit total first; 1 = no preference, the issue's target is 3).
Not a test: the numbers depend on the cohort draw and the machine.

Set ``TEMPLATEFLOW_HOME`` to an offline TemplateFlow home to simulate on
MNI152NLin2009cAsym (otherwise nilearn's 2009a template).

Usage::

    python benchmarks/learning.py [--sizes 20 40 80 160] [--resolution 4] [--null] [--threads 2]
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from adheat_app import simulate
from adheat_app.attribution.catalog import default_methods
from adheat_app.attribution.runner import run_heatmaps
from adheat_app.bids import Derivatives
from adheat_app.cohort import load_cohort
from adheat_app.config import build_config
from adheat_app.layout import heatmap_path
from adheat_app.simulate import relevance_ratio
from adheat_app.training import run_training

#: Methods scored: the default ones and patch occlusion.
METHODS = (*default_methods(), "Occlusion")


def one_size(folder: Path, n: int, args: argparse.Namespace) -> dict:
    """Simulate, train and explain one cohort of ``n`` subjects with the defaults; return its row."""
    bids = simulate.simulate_cohort(folder / "bids", n_subjects=n, resolution=args.resolution, seed=args.seed,
                                    effect_size=args.effect_size, null=args.null, regions=tuple(args.regions),
                                    nprocs=args.threads, atrophy_model=args.atrophy_model)
    truth = simulate.build_ground_truth(args.resolution, tuple(args.regions))
    sections = {"execution": {"resolution": args.resolution, "seed": args.seed, "omp_nthreads": args.threads},
                "heatmaps": {"methods": METHODS, "occlusion_size": args.occlusion_size,
                             "occlusion_stride": args.occlusion_stride}}
    config = build_config(bids, folder / "out", ("group",), {}, sections)
    derivs = Derivatives(config.output_dir, bids)
    derivs.initialize()
    specs = simulate.plan_cohort(n, seed=args.seed, effect_size=args.effect_size, null=args.null,
                                 atrophy_model=args.atrophy_model)
    inputs = simulate.write_template_space_derivatives(derivs, truth, specs, config.preprocessing.intensity_norm,
                                                       seed=args.seed)
    cohort = load_cohort(config, derivs, inputs)
    tic = time.perf_counter()
    run_training(config, derivs, cohort)
    train_seconds = (time.perf_counter() - tic) / config.training.folds
    tic = time.perf_counter()
    run_heatmaps(config, derivs, cohort)
    heatmap_seconds = time.perf_counter() - tic
    table = pd.read_csv(derivs.root / "group" / "cv_metrics.tsv", sep="\t", dtype={"fold": str}).set_index("fold")
    brain = truth.template.mask_array().astype(bool)
    ad = [s for s in cohort.scans if s.target == 1]
    row = {"subjects": n, "balanced_accuracy": table.loc["mean", "balanced_accuracy"],
           "pooled_auc": table.loc["pooled", "roc_auc"],
           "auc_95ci": f"{table.loc['pooled', 'roc_auc_ci_low']:.2f}-{table.loc['pooled', 'roc_auc_ci_high']:.2f}",
           "s_per_fold": round(train_seconds, 1), "heatmap_s": round(heatmap_seconds, 1)}
    for method in METHODS:
        maps = np.stack([np.asarray(nib.load(heatmap_path(derivs.root, s, cohort.space, cohort.res_label, method)).dataobj)
                         for s in ad])
        row[method] = relevance_ratio(maps, truth.region, brain)
    return row


def main(argv: list[str] | None = None) -> int:
    """Run every size and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[20, 40, 80, 160])
    parser.add_argument("--resolution", type=float, default=4.0)
    parser.add_argument("--atrophy-model", choices=simulate.ATROPHY_MODELS, default=simulate.ATROPHY_MODELS[0])
    parser.add_argument("--effect-size", type=float, default=None, help="default: the atrophy model's")
    parser.add_argument("--regions", nargs="+", default=list(simulate.DEFAULT_REGIONS))
    parser.add_argument("--null", action="store_true", help="no atrophy (the ratios should stay near 1)")
    parser.add_argument("--occlusion-size", type=float, default=40.0, help="Occlusion patch edge (mm)")
    parser.add_argument("--occlusion-stride", type=float, default=20.0, help="Occlusion stride (mm)")
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--keep", type=Path, default=None, help="keep the outputs in this folder")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        for n in args.sizes:
            rows.append(one_size(root / f"n{n}", n, args))
            print(pd.DataFrame(rows).round(2).to_string(index=False), flush=True)
    effect = args.effect_size if args.effect_size is not None else simulate.DEFAULT_EFFECT_SIZE[args.atrophy_model]
    print(f"\n{args.resolution:g} mm, {args.atrophy_model} atrophy, effect size {effect}, regions {' '.join(args.regions)}"
          f"{' (null cohort)' if args.null else ''}; Occlusion {args.occlusion_size:g} mm patches, stride "
          f"{args.occlusion_stride:g} mm; ratio = mean |relevance| per voxel inside / outside the "
          "planted region, mean out-of-fold AD map; 1 = no preference")
    return 0


if __name__ == "__main__":
    sys.exit(main())
