"""Benchmark: how much of the planted atrophy the participant level's log Jacobian shows, per parent anatomy.

For each parent (``template``: the registration target itself; a built-in; a T1w file) simulates a cohort with
``adheat-simulate`` (same seed, size and resolution), runs ``adheat participant`` (SyN) on it through the command
line, and prints, from every subject's template-space log Jacobian (``desc-logjacobian_T1w``), the AD-vs-CN
Cohen's d of its mean inside the cohort's truth map (the planted region, ``desc-atrophy_probseg`` >= 0.5) and
inside a far control region (template brain farther than 30 mm from every planted region, where nothing was
planted: d there is what a pipeline shows without a disease), each with a bootstrap 95 % interval over subjects,
and the correlation over AD subjects between the log Jacobian read by SyN and the planted one (both in template
space, inside the truth map). A parent that is the registration target lets SyN undo its smooth warps almost
exactly; another head keeps its own folding, so its numbers are the honest ones. With ``--keep`` the cohorts
and outputs stay in ``KEEP/parent-<k>/{bids,out}`` and a rerun reuses them; the participant level runs with
``--seed`` as ``ground_truth.py`` runs it, so a ``ground_truth.py --keep`` cohort of the same seed (its
``planted`` folder linked as ``parent-0``) is measured without registering again. Not a test: numbers depend on
the draw and the machine.

Usage::

    python benchmarks/parents.py [--anatomy template MNI152NLin6Asym FILE ...] [--subjects 12] [--resolution 4]
        [--seed 11] [--keep KEEP]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from scipy import ndimage

from ground_truth import ADHEAT, SIMULATE, _command
from adheat_app.layout import simulation_root, simulation_subject_map, simulation_truth_path
from adheat_app.simulate.parents import DEFAULT_ANATOMY, TEMPLATE_PARENT

BOOTSTRAP = 1000
FAR_MM = 30.0


def cohens_d(ad: np.ndarray, cn: np.ndarray) -> float:
    """(mean AD - mean CN) / pooled SD."""
    pooled = np.sqrt(((len(ad) - 1) * ad.var(ddof=1) + (len(cn) - 1) * cn.var(ddof=1)) / (len(ad) + len(cn) - 2))
    return float((ad.mean() - cn.mean()) / pooled)


def d_with_interval(ad: np.ndarray, cn: np.ndarray, seed: int = 0) -> tuple[float, float, float]:
    rng = np.random.default_rng(seed)
    samples = [cohens_d(rng.choice(ad, len(ad)), rng.choice(cn, len(cn))) for _ in range(BOOTSTRAP)]
    return cohens_d(ad, cn), float(np.percentile(samples, 2.5)), float(np.percentile(samples, 97.5))


def one_parent(work: Path, anatomy: str, args: argparse.Namespace) -> dict:
    """Simulate, register and measure one parent's cohort."""
    bids, out = work / "bids", work / "out"
    tic = time.perf_counter()
    if not (bids / "participants.tsv").is_file():
        _command(SIMULATE, bids, "--anatomy", anatomy, "--n-subjects", args.subjects, "--resolution", args.resolution,
                 "--seed", args.seed, "--nprocs", args.nprocs)
    _command(ADHEAT, bids, out, "participant", "--resolution", args.resolution, "--seed", args.seed,
             "--nprocs", args.nprocs, "--omp-nthreads", 1, "--skip-bids-validation")
    seconds = time.perf_counter() - tic
    table = pd.read_csv(bids / "participants.tsv", sep="\t")
    maps = {pid: np.asarray(nib.load(next((out / pid / "anat").glob("*_desc-logjacobian_T1w.nii.gz"))).dataobj)
            for pid in table["participant_id"]}
    name = next((out / table["participant_id"][0] / "anat").glob("*_desc-logjacobian_T1w.nii.gz")).name
    space = name.split("space-")[1].split("_")[0]
    res = name.split("res-")[1].split("_")[0]
    root = simulation_root(bids)
    truth = np.asarray(nib.load(simulation_truth_path(bids, space, res)).dataobj) >= 0.5
    planted_any = np.zeros_like(truth)
    for pid in table["participant_id"]:
        planted_any |= np.asarray(nib.load(simulation_subject_map(root, pid.removeprefix("sub-"), space, res,
                                                                  "probseg")).dataobj) > 0.01
    brain = np.abs(np.stack(list(maps.values()))).sum(axis=0) > 0
    far = brain & (ndimage.distance_transform_edt(~planted_any, sampling=float(res)) > FAR_MM)
    values = {region: {pid: float(m[mask].mean()) for pid, m in maps.items()}
              for region, mask in (("truth", truth & brain), ("far", far))}
    groups = dict(zip(table["participant_id"], table["diagnosis"]))
    row = {"anatomy": anatomy, "n": len(table), "seconds": round(seconds)}
    for region in ("truth", "far"):
        ad = np.array([v for pid, v in values[region].items() if groups[pid] == "AD"])
        cn = np.array([v for pid, v in values[region].items() if groups[pid] == "CN"])
        row[f"d_{region}"] = "{:.2f} ({:.2f} to {:.2f})".format(*d_with_interval(ad, cn, args.seed))
    correlations = []
    for pid in table["participant_id"]:
        if groups[pid] != "AD":
            continue
        planted = np.asarray(nib.load(simulation_subject_map(root, pid.removeprefix("sub-"), space, res,
                                                             "logjacobian")).dataobj)
        correlations.append(np.corrcoef(planted[truth & brain], maps[pid][truth & brain])[0, 1])
    row["r_planted_vs_syn (AD mean)"] = round(float(np.mean(correlations)), 3)
    row["truth_ml"] = round(float(truth.sum()) * float(res) ** 3 / 1000, 1)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--anatomy", nargs="+", default=[TEMPLATE_PARENT, *DEFAULT_ANATOMY])
    parser.add_argument("--subjects", type=int, default=12)
    parser.add_argument("--resolution", type=float, default=4.0)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--nprocs", type=int, default=2)
    parser.add_argument("--keep", type=Path, default=None, help="keep the cohorts and outputs in this folder")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for k, anatomy in enumerate(args.anatomy):
            rows.append(one_parent((args.keep or Path(tmp)) / f"parent-{k}", anatomy, args))
            print(pd.DataFrame(rows[-1:]).to_string(index=False), flush=True)
    print()
    print(pd.DataFrame(rows).to_string(index=False))


if __name__ == "__main__":
    main()
