"""Benchmark of the participant-level preprocessing on simulated scans (not a test).

Prints, for this machine: wall time and peak memory per subject at 2 mm and
1 mm with the default SyN registration, and the wall time of 4 subjects at
2 mm with ``--nprocs 1`` and ``--nprocs 2`` (one thread per job) and their
ratio. Needs the 2009c template in ``$TEMPLATEFLOW_HOME`` (or runs on nilearn's
fallback template).

Usage::

    python benchmarks/preprocess.py [--work DIR] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

from adheat_app.bids import Derivatives, T1wInput
from adheat_app.config import build_config
from adheat_app.layout import sidecar_path
from adheat_app.preprocess import pipeline, run_preprocessing
from adheat_app.simulate import simulate_cohort
from adheat_app.templates import get_template


def _inputs(bids_dir: Path, n: int) -> list[T1wInput]:
    return [T1wInput(f"{i:02d}", None, bids_dir / f"sub-{i:02d}" / "anat" / f"sub-{i:02d}_T1w.nii.gz")
            for i in range(1, n + 1)]


def _run(bids_dir: Path, out: Path, resolution: float, inputs: list[T1wInput], nprocs: int, threads: int
         ) -> tuple[float, list[float]]:
    """Preprocess ``inputs``; return the total wall time and each subject's own wall time."""
    config = build_config(bids_dir, out, ("participant",), {}, {
        "execution": {"resolution": resolution, "nprocs": nprocs, "omp_nthreads": threads, "seed": 1}})
    derivs = Derivatives(out, bids_dir)
    derivs.initialize()
    template = get_template(resolution)
    start = time.perf_counter()
    failed = run_preprocessing(config, inputs, derivs, template)
    total = time.perf_counter() - start
    if failed:
        raise RuntimeError(f"benchmark scans failed: {failed}")
    each = [json.loads(sidecar_path(pipeline.output_paths(derivs, t, template).image).read_text())["WallTimeSeconds"]
            for t in inputs]
    return total, each


def main() -> None:
    """Run the benchmark, printing each line as soon as it is measured."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=None, help="Scratch folder (default: a temporary one).")
    parser.add_argument("--threads", type=int, default=2, help="Threads for the one-subject timings.")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="adheat-bench-"))
    cohorts = {}
    for resolution, n in ((2.0, 4), (1.0, 2)):
        cohorts[resolution] = simulate_cohort(work / f"bids-{resolution:g}", n_subjects=n, resolution=resolution,
                                              seed=3, nprocs=2)
        _, each = _run(cohorts[resolution], work / f"single-{resolution:g}", resolution,
                       _inputs(cohorts[resolution], 1), 1, args.threads)
        peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024**2
        print(f"{resolution:g} mm, 1 subject, {args.threads} threads: {each[0]:.1f} s, "
              f"peak RSS of the largest job so far {peak_gb:.2f} GB", flush=True)
    serial, _ = _run(cohorts[2.0], work / "nprocs1", 2.0, _inputs(cohorts[2.0], 4), 1, 1)
    parallel, _ = _run(cohorts[2.0], work / "nprocs2", 2.0, _inputs(cohorts[2.0], 4), 2, 1)
    print(f"2 mm, 4 subjects, 1 thread per job: --nprocs 1 {serial:.1f} s, --nprocs 2 {parallel:.1f} s, "
          f"ratio nprocs2/nprocs1 = {parallel / serial:.2f}", flush=True)

if __name__ == "__main__":
    main()
