"""Faithfulness fills: seconds per subject of ``--faithfulness-fill mean`` and ``noisy-linear``, and the solver.

Usage::

    python benchmarks/faithfulness_fill.py [--subjects 12] [--resolution 4] [--seed 4] [--methods Saliency IG]
                                           [--threads 1]

Builds the tests' simulated cohort (``make_preprocessed_cohort``: template
anatomy, darkening atrophy of effect size 0.4, the analysis grid at
``--resolution`` mm), trains the default model on 2 folds (3 epochs: speed
does not depend on training), derives the ``--methods`` maps, then runs
``--faithfulness`` once with each fill and prints the seconds per subject
(all maps, both unit kinds, every order), the ratio of the two, and the
faithfulness table's deletion AOPC of every map's most-relevant-first and
random orders under each fill. Last, it times the linear system of the
imputation on the first scan's 10 cumulative ``blocks`` masks of the first map
(up to half the brain) two ways: conjugate gradients with a Jacobi
preconditioner (adheat) and a sparse LU factorisation (scipy's ``splu``, the
plain way, as ROAD's ``spsolve``), with their largest difference.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import torch
from scipy.sparse.linalg import splu

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import make_preprocessed_cohort  # noqa: E402  (the tests' simulated cohort)

from adheat_app.attribution.runner import run_heatmaps  # noqa: E402
from adheat_app.evaluation import imputation  # noqa: E402
from adheat_app.evaluation.faithfulness import run_faithfulness, unit_orders, voxel_blocks  # noqa: E402
from adheat_app.layout import heatmap_path  # noqa: E402
from adheat_app.training import run_training  # noqa: E402


def solver_times(image: np.ndarray, masks: list[np.ndarray], brain: np.ndarray) -> tuple[float, float, float]:
    """Seconds of the imputation's linear systems of ``masks`` by conjugate gradients and by sparse LU, and the
    largest difference of their solutions."""
    captured = {}
    original = imputation.cg

    def capture(system, rhs, **options):
        captured.setdefault("systems", []).append((system, rhs))
        return original(system, rhs, **options)

    imputation.cg = capture
    start = time.perf_counter()
    cg_values = [imputation.harmonic_fill(image, mask, brain) for mask in masks]
    cg_time = time.perf_counter() - start
    imputation.cg = original
    start = time.perf_counter()
    lu_values = [splu(system.tocsc()).solve(rhs) for system, rhs in captured["systems"]]
    lu_time = time.perf_counter() - start
    rows = [row for values in cg_values for row in values]  # per mask, per channel: the systems' order
    difference = max(float(np.abs(a - b).max()) for a, b in zip(rows, lu_values))
    return cg_time, lu_time, difference


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=12)
    parser.add_argument("--resolution", type=float, default=4.0)
    parser.add_argument("--seed", type=int, default=4)
    parser.add_argument("--methods", nargs="+", default=["Saliency", "IG"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--root", type=Path, default=None, help="a new folder (default: a new temporary one)")
    args = parser.parse_args()
    root = args.root or Path(tempfile.mkdtemp(prefix="adheat_faithfulness_fill_"))
    torch.set_num_threads(args.threads)
    config, derivs, cohort, _ = make_preprocessed_cohort(
        root, n_subjects=args.subjects, resolution=args.resolution, seed=args.seed, effect_size=0.4,
        training__model="resnet3d", training__folds=2, training__steps=0, training__epochs=3,
        training__batch_size=4, training__learning_rate=1e-3, heatmaps__methods=tuple(args.methods),
        heatmaps__ig_steps=8, evaluation__faithfulness=True, evaluation__n_bootstrap=200)
    run_training(config, derivs, cohort)
    run_heatmaps(config, derivs, cohort)
    subjects = len({scan.subject for scan in cohort.scans})
    seconds, tables = {}, {}
    for fill in ("mean", "noisy-linear"):
        start = time.perf_counter()
        tables[fill] = run_faithfulness(config.replace("evaluation", faithfulness_fill=fill), derivs, cohort)
        seconds[fill] = time.perf_counter() - start
        print(f"{fill:>12}: {seconds[fill] / subjects:7.2f} s per subject ({len(args.methods)} maps, "
              f"{subjects} subjects, {args.resolution:g} mm, {args.threads} thread(s))")
    print(f"noisy-linear / mean: {seconds['noisy-linear'] / seconds['mean']:.1f}x")
    rows = pd.concat([table.assign(fill=fill) for fill, table in tables.items()])
    rows = rows[rows["order"].isin(["morf", "random"])]
    print(rows.pivot_table(index=["method", "units", "fill"], columns="order", values="deletion_aopc").round(3))
    scan = cohort.scans[0]
    brain = np.asarray(nib.load(scan.mask).dataobj) > 0
    relevance = np.asarray(nib.load(heatmap_path(derivs.root, scan, cohort.space, cohort.res_label,
                                                 args.methods[0])).dataobj, np.float32)
    masks = unit_orders(relevance, voxel_blocks(relevance, brain), args.seed)["morf"]
    image = np.asarray(nib.load(scan.image).dataobj, np.float32)[None]
    cg_time, lu_time, difference = solver_times(image, masks, brain)
    print(f"linear systems of {len(masks)} blocks masks ({int(brain.sum())} brain voxels): conjugate gradients "
          f"{cg_time:.2f} s, sparse LU {lu_time:.2f} s ({lu_time / cg_time:.0f}x); largest difference {difference:.2g}")


if __name__ == "__main__":
    main()
