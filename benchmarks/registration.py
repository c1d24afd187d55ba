"""Benchmark of the registration backends against ANTs SyN, on simulated and real heads (not a test).

For each backend (``--backends``, default ``syn fireants``) the participant
level runs on the same inputs, one job at a time with ``--threads`` threads:

- a simulated tissue-loss cohort (``--subjects``, ``--seed``) at
  ``--resolution``: registration NCC and brain-mask Dice per scan, Dice of the
  planted region mapped back to each native grid (nearest neighbour through the
  inverse transform) with the simulator's native truth mask, the mean log
  Jacobian of the planted region per scan (AD vs CN Cohen's d) and its
  correlation with the first backend's;
- the real whole heads in ``--real`` (``chris_t1.nii.gz``,
  ``colin27_ch2_MRIcron.nii.gz``; deepbet skull-stripping): NCC and Dice;
- the wall time of each backend and its ratio to the first one.

Intervals are 95 % percentile bootstraps over scans (2000 resamples) of the
mean difference from the first backend. Needs the 2009c template in
``$TEMPLATEFLOW_HOME`` (or runs on nilearn's fallback template).

Usage::

    python benchmarks/registration.py [--work DIR] [--subjects 6] [--resolution 4] [--real DIR] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from adheat_app.bids import Derivatives, T1wInput
from adheat_app.config import build_config
from adheat_app.layout import sidecar_path, subject_path
from adheat_app.preprocess import pipeline, qc, run_preprocessing, to_native
from adheat_app.simulate import simulate_cohort
from adheat_app.templates import get_template

REAL_HEADS = {"chris": "chris_t1.nii.gz", "colin": "colin27_ch2_MRIcron.nii.gz"}


def _preprocess(bids_dir: Path, out: Path, inputs: list[T1wInput], backend: str, resolution: float, threads: int
                ) -> tuple[float, Derivatives]:
    config = build_config(bids_dir, out, ("participant",), {}, {
        "execution": {"resolution": resolution, "nprocs": 1, "omp_nthreads": threads, "seed": 1},
        "preprocessing": {"registration": backend}})
    derivs = Derivatives(out, bids_dir)
    derivs.initialize()
    start = time.perf_counter()
    failed = run_preprocessing(config, inputs, derivs, get_template(resolution))
    if failed:
        raise RuntimeError(f"{backend}: scans failed: {failed}")
    return time.perf_counter() - start, derivs


def _sidecar(derivs: Derivatives, t1w: T1wInput, template, backend: str) -> dict:
    return json.loads(sidecar_path(pipeline.output_paths(derivs, t1w, template, backend).image).read_text())


def _simulated_rows(bids_dir: Path, derivs: Derivatives, inputs: list[T1wInput], backend: str, template,
                    truth: np.ndarray) -> list[dict]:
    participants = pd.read_csv(bids_dir / "participants.tsv", sep="\t").set_index("participant_id")
    rows = []
    for t1w in inputs:
        side = _sidecar(derivs, t1w, template, backend)
        mapped = to_native(nib.Nifti1Image(truth.astype(np.float32), template.affine), derivs, t1w, "nearest")
        native = np.asarray(nib.load(subject_path(bids_dir / "derivatives" / "simulation", t1w.subject, None,
                                                  "mask", desc="atrophy")).dataobj) > 0
        logjac = np.asarray(nib.load(pipeline.output_paths(derivs, t1w, template, backend).logjacobian).dataobj)
        rows.append({"backend": backend, "scan": t1w.key, "ncc": side["RegistrationNCC"],
                     "dice": side["BrainMaskDice"], "region_dice": qc.dice(np.asarray(mapped.dataobj) > 0.5, native),
                     "region_logjac": float(logjac[truth].mean()),
                     "diagnosis": participants.loc[f"sub-{t1w.subject}", "diagnosis"]})
    return rows


def _bootstrap(values: np.ndarray, rng: np.random.Generator) -> tuple[float, float]:
    means = rng.choice(values, size=(2000, len(values))).mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def _cohen_d(table: pd.DataFrame) -> float:
    ad, cn = (table.loc[table["diagnosis"] == d, "region_logjac"].to_numpy() for d in ("AD", "CN"))
    return float((ad.mean() - cn.mean()) / np.sqrt((ad.var(ddof=1) + cn.var(ddof=1)) / 2))


def _report(table: pd.DataFrame, backends: list[str], seconds: dict[str, float], label: str) -> None:
    """Print each backend's means and its mean difference from the first backend (bootstrap interval)."""
    rng = np.random.default_rng(0)
    first = table[table["backend"] == backends[0]].set_index("scan")
    columns = [c for c in ("ncc", "dice", "region_dice") if c in table]
    for backend in backends:
        own = table[table["backend"] == backend].set_index("scan")
        parts = [f"{c} {own[c].mean():.4f} [{own[c].min():.3f}-{own[c].max():.3f}]" for c in columns]
        if "region_logjac" in own:
            parts.append(f"planted log-Jacobian AD-vs-CN d {_cohen_d(own):.2f}")
        print(f"{label} {backend}: {len(own)} scans, {seconds[backend]:.1f} s "
              f"(x{seconds[backend] / seconds[backends[0]]:.2f} of {backends[0]}); " + ", ".join(parts), flush=True)
        if backend != backends[0]:
            for c in columns:
                diff = (own[c] - first[c]).to_numpy()
                low, high = _bootstrap(diff, rng)
                print(f"  {c} minus {backends[0]}: {diff.mean():+.4f} (95% CI {low:+.4f} to {high:+.4f})")
            if "region_logjac" in own:
                r = np.corrcoef(own["region_logjac"], first["region_logjac"])[0, 1]
                print(f"  planted-region mean log Jacobian: correlation with {backends[0]} {r:.3f} over scans; "
                      f"mean {own['region_logjac'].mean():+.3f} vs {first['region_logjac'].mean():+.3f}")


def _simulated(work: Path, args: argparse.Namespace) -> None:
    bids_dir = simulate_cohort(work / "sim", n_subjects=args.subjects, resolution=args.resolution, seed=args.seed)
    template = get_template(args.resolution)
    truth_file = next((bids_dir / "derivatives" / "simulation").glob(
        f"space-{template.space}_res-{template.res_label}_desc-atrophy_probseg.nii.gz"))
    truth = np.asarray(nib.load(truth_file).dataobj) > 0.5
    inputs = [T1wInput(s.removeprefix("sub-"), None, bids_dir / s / "anat" / f"{s}_T1w.nii.gz")
              for s in pd.read_csv(bids_dir / "participants.tsv", sep="\t")["participant_id"]]
    rows, seconds = [], {}
    for backend in args.backends:
        seconds[backend], derivs = _preprocess(bids_dir, work / f"sim-{backend}", inputs, backend, args.resolution,
                                               args.threads)
        rows += _simulated_rows(bids_dir, derivs, inputs, backend, template, truth)
    _report(pd.DataFrame(rows), args.backends, seconds, f"simulated ({args.resolution:g} mm, seed {args.seed})")


def _real(work: Path, args: argparse.Namespace) -> None:
    bids_dir = work / "real"
    (bids_dir).mkdir(parents=True, exist_ok=True)
    (bids_dir / "dataset_description.json").write_text(json.dumps({"Name": "real", "BIDSVersion": "1.10.0"}))
    inputs = []
    for label, name in REAL_HEADS.items():
        target = bids_dir / f"sub-{label}" / "anat" / f"sub-{label}_T1w.nii.gz"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(args.real / name, target)
        inputs.append(T1wInput(label, None, target))
    template = get_template(args.resolution)
    rows, seconds = [], {}
    for backend in args.backends:
        seconds[backend], derivs = _preprocess(bids_dir, work / f"real-{backend}", inputs, backend, args.resolution,
                                               args.threads)
        rows += [{"backend": backend, "scan": t1w.key, "ncc": (side := _sidecar(derivs, t1w, template, backend))
                  ["RegistrationNCC"], "dice": side["BrainMaskDice"]} for t1w in inputs]
    table = pd.DataFrame(rows)
    print(table.pivot(index="scan", columns="backend", values=["ncc", "dice"]).round(4).to_string())
    _report(table, args.backends, seconds, f"real heads ({args.resolution:g} mm)")


def main() -> None:
    """Run the benchmark, printing each block as soon as it is measured."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=None, help="Scratch folder (default: a temporary one).")
    parser.add_argument("--backends", nargs="+", default=["syn", "fireants"], help="First one is the baseline.")
    parser.add_argument("--subjects", type=int, default=6, help="Simulated subjects (0: none).")
    parser.add_argument("--seed", type=int, default=5, help="Seed of the simulated cohort.")
    parser.add_argument("--resolution", type=float, default=4.0, help="Analysis grid (mm).")
    parser.add_argument("--real", type=Path, default=None, help="Folder holding the real heads (optional).")
    parser.add_argument("--threads", type=int, default=1, help="Threads per job (ANTs and torch).")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="adheat-bench-"))
    if args.subjects:
        _simulated(work, args)
    if args.real is not None:
        _real(work, args)


if __name__ == "__main__":
    main()
