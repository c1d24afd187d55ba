"""Benchmark: what the group level's evaluation step costs, and what each of its options adds.

Simulates a cohort (``adheat-simulate``'s generator, template-space images
written directly as the tests do: no registration, no training), writes
synthetic heatmaps of two methods (the planted truth plus noise; ``IG``
signed, ``Saliency`` absolute, the default methods) for every scan, and times
:func:`adheat_app.evaluation.run_evaluation` with ``--overwrite`` under option
variants:

* ``plain``: ``--n-surrogates 0 --n-permutations 0`` (group maps, overlap
  bootstrap, controls, paired differences, answer, regions, distances);
* ``spatial null``: plus the default ``--n-surrogates``;
* ``cohort reference``: plus the default ``--n-permutations`` (one test per
  input channel);
* ``defaults``: both.

Each line prints the wall time and its ratio to ``plain``. ``--sessions 2``
gives every subject two sessions (subject-level resampling). Not a test:
numbers depend on the machine and its load.

Usage::

    python benchmarks/evaluation.py [--subjects 24] [--resolution 4] [--bootstrap 1000] [--sessions 1]
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from adheat_app import simulate
from adheat_app.bids import Derivatives
from adheat_app.cohort import load_cohort
from adheat_app.config import EvaluationOptions, build_config
from adheat_app.evaluation import run_evaluation


def _cohort(root: Path, subjects: int, resolution: float, sessions: int, bootstrap: int):
    """An oracle-preprocessed simulated cohort with synthetic heatmaps; the config, derivatives, cohort, truth."""
    bids = simulate.simulate_cohort(root / "bids", n_subjects=subjects, resolution=resolution, seed=0,
                                    sessions=sessions)
    truth = simulate.build_ground_truth(resolution)
    config = build_config(bids, root / "out", ("group",), {}, {
        "execution": {"resolution": resolution, "seed": 0, "nprocs": 1, "omp_nthreads": 1},
        "evaluation": {"n_bootstrap": bootstrap}})
    derivs = Derivatives(config.output_dir, bids)
    derivs.initialize()
    specs = simulate.plan_cohort(subjects, seed=0, sessions=sessions)
    inputs = simulate.write_template_space_derivatives(derivs, truth, specs, config.preprocessing.intensity_norm)
    cohort = load_cohort(config, derivs, inputs)
    rng = np.random.default_rng(0)
    mask = truth.template.mask_array()
    for scan in cohort.scans:
        for method in ("IG", "Saliency"):
            data = (truth.probseg + rng.normal(0, 0.15, truth.probseg.shape)).astype(np.float32) * mask
            path = derivs.subject_path(scan.subject, scan.session, "heatmap", space=cohort.space,
                                       res=cohort.res_label, desc=method)
            derivs.write_image(path, nib.Nifti1Image(data if method == "IG" else np.abs(data),
                                                     truth.template.affine),
                               {"Method": method, "Signed": method == "IG"})
    return config, derivs, cohort, truth


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=24)
    parser.add_argument("--resolution", type=float, default=4.0)
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--sessions", type=int, default=1)
    args = parser.parse_args()
    defaults = EvaluationOptions()
    variants = {"plain": {"n_surrogates": 0, "n_permutations": 0},
                "spatial null": {"n_permutations": 0},
                "cohort reference": {"n_surrogates": 0},
                "defaults": {}}
    with tempfile.TemporaryDirectory() as tmp:
        config, derivs, cohort, truth = _cohort(Path(tmp), args.subjects, args.resolution, args.sessions,
                                                args.bootstrap)
        print(f"{len(cohort.scans)} scans, {args.resolution:g} mm, {args.bootstrap} resamples, "
              f"--n-surrogates {defaults.n_surrogates}, --n-permutations {defaults.n_permutations}")
        times = {}
        for name, options in variants.items():
            run = dataclasses.replace(
                config, evaluation=dataclasses.replace(config.evaluation, **options),
                execution=dataclasses.replace(config.execution, overwrite=True))
            start = time.perf_counter()
            run_evaluation(run, derivs, cohort, truth.template)
            times[name] = time.perf_counter() - start
            print(f"{name:>17}: {times[name]:7.1f} s  ({times[name] / times['plain']:.2f} x plain)")


if __name__ == "__main__":
    main()
