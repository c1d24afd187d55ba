"""Benchmark: which heatmap methods recover a planted ground truth, through the whole product.

Simulates a cohort with ``adheat-simulate`` (size, resolution, atrophy model,
sites and site imbalance as options; a cohort kept with ``--keep`` is reused),
runs ``adheat participant`` and ``adheat group`` on it through the command
line with the product's defaults
(``--registration`` and ``--input`` may be set, the variables this benchmark
exists to compare), and prints, for every heatmap method, the SVM pattern and
the controls, how well the group's ``all`` map recovers the planted truth
(``derivatives/simulation``): ROC AUC and Dice of the top 5 % voxels, each with
the group level's 95 % bootstrap interval over subjects, their chance levels,
whether the map beats its strongest control (paired interval above 0; the
control's name; ``group/answer.tsv``), whether it finds the truth (the
answer's verdict), and the relevance ratio (mean |relevance| per voxel
inside the planted region over the rest of the brain, subjects' maps scaled to
unit total; 1 = no preference) with a bootstrap interval over subjects. The
CNN's and the SVM's cross-validated ROC AUC head the table.

``--confounded`` adds the run the site confound needs: the same cohort size
with no atrophy and ``--site-imbalance`` (default 0.8) of the AD subjects from
site 0, so a model can only follow the site; its table shows what a
site-following model's maps look like, and the ``covariate-site`` row of the
cross-validation table (a classifier reading the site alone) shows what a
model can score without the brain. Not a test: numbers depend on the cohort
draw and the machine.

``--cohort`` picks the seeds and parent anatomies of :data:`COHORTS`:
``development`` cohorts are those the defaults may be tuned on, ``report``
cohorts (the default) use other seeds and a parent that was never used to
choose anything, and are the only source of README's numbers; each table's
heading names its cohort, seed and parents.

Usage::

    python benchmarks/ground_truth.py [--cohort report] [--subjects 120] [--resolution 4] [--registration syn]
        [--input auto] [--atrophy-model tissue-loss] [--sites 1] [--confounded]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from adheat_app.evaluation.controls import grey_matter_prior, unit_total
from adheat_app.inputs import card_channels
from adheat_app.io import read_json
from adheat_app.templates import get_template

#: Cohorts: *development* (seeds and parents the defaults may be tuned on) and *report* (other seeds and a
#: parent never used to choose anything; README's headline numbers come from these only).
COHORTS = {
    "development": {"seeds": (3, 5, 11), "anatomy": ("template", "MNI152NLin6Asym")},
    "report": {"seeds": (101, 202, 303, 404, 505), "anatomy": ("MNI152NLin2009aSym",)},
}
#: Top-k (%) of the Dice column.
DICE_PERCENT = 5.0
BOOTSTRAP = 1000


#: The two commands, as a user runs them (``adheat-simulate`` and ``adheat``), in this interpreter.
SIMULATE = ["-m", "adheat_app.simulate"]
ADHEAT = ["-m", "adheat_app"]


def _command(program: list[str], *args: object) -> None:
    """Run ``program`` with ``args`` in this interpreter; stop on failure with its stderr."""
    proc = subprocess.run([sys.executable, *program, *map(str, args)], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(map(str, args[:4]))} failed:\n{proc.stderr[-3000:]}")


def _interval(samples: np.ndarray) -> tuple[float, float]:
    return float(np.percentile(samples, 2.5)), float(np.percentile(samples, 97.5))


def ratio_with_interval(maps: np.ndarray, region: np.ndarray, seed: int) -> tuple[float, float, float]:
    """Relevance ratio of unit-total maps ``(n, V)`` (brain voxels) for ``region`` ``(V,)``, bootstrap over maps."""
    mean_ratio = lambda rows: float(rows.mean(0)[region].mean() / rows.mean(0)[~region].mean())  # noqa: E731
    rng = np.random.default_rng(seed)
    samples = [mean_ratio(maps[rng.integers(0, len(maps), len(maps))]) for _ in range(BOOTSTRAP)]
    return (mean_ratio(maps), *_interval(np.asarray(samples)))


def model_channels(out: Path) -> tuple[str, ...]:
    """The input channels the CNN was trained on (its first fold's model card)."""
    return card_channels(read_json(next((out / "models").glob("*/fold-0/model.json"))))


def input_maps(out: Path, grid: str, channels: tuple[str, ...], brain: np.ndarray) -> np.ndarray:
    """The ``InputMagnitude`` control's per-scan maps ``(n, V)``: each input channel at unit total, summed."""
    descs = {"intensity": "preproc", "logjacobian": "logjacobian"}
    maps = [unit_total(np.stack([np.asarray(nib.load(p).dataobj, np.float32)[brain] for p in
                                 sorted(out.glob(f"sub-*/**/*_{grid}_desc-{descs[name]}_T1w.nii.gz"))]))
            for name in channels]
    return unit_total(sum(maps))


def table(out: Path, bids: Path, seed: int) -> pd.DataFrame:
    """One row per map: the planted truth's recovery (see the module docstring)."""
    group = out / "group"
    overlap = pd.read_csv(group / "overlap.tsv", sep="\t", na_values=["n/a"])
    overlap = overlap[(overlap["reference"] == "simulation") & (overlap["label"] == "all")
                      & (overlap["sign"] == "absolute")]
    answer = pd.read_csv(group / "answer.tsv", sep="\t").query("reference == 'simulation' and sign == 'absolute'")
    beats = {row.method: f"{row.above_control} ({row.control})" for row in answer.itertuples(index=False)}
    finds = dict(zip(answer["method"], answer["finds_reference"]))
    truth_path = next((bids / "derivatives" / "simulation").glob("space-*_desc-atrophy_probseg.nii.gz"))
    mask_path = next(out.glob("sub-*/anat/*_desc-brain_mask.nii.gz"))
    grid = "_".join(part for part in mask_path.name.split("_") if part.startswith(("space-", "res-")))
    truth = np.asarray(nib.load(truth_path).dataobj) > 0.5
    space, res = (part.split("-", 1)[1] for part in grid.split("_"))
    template = get_template(float(res.replace("p", ".")), space=space)
    brain = template.mask_array()
    region = truth[brain]
    rows = []
    for (method, kind), rows_of in overlap.groupby(["method", "kind"], sort=False):
        auc = rows_of[rows_of["metric"] == "roc_auc"].iloc[0]
        dice = rows_of[(rows_of["metric"] == "dice") & (rows_of["top_percent"].astype(float) == DICE_PERCENT)].iloc[0]
        paths = sorted(out.glob(f"sub-*/**/*_{grid}_desc-{method}_heatmap.nii.gz"))
        if method == "InputMagnitude":
            ratio = ratio_with_interval(input_maps(out, grid, model_channels(out), brain), region, seed)
        elif paths:
            maps = unit_total(np.stack([np.asarray(nib.load(p).dataobj, np.float32)[brain] for p in paths]))
            ratio = ratio_with_interval(maps, region, seed)
        elif method in ("SVM", "GreyMatterPrior"):  # one map: no interval over subjects
            single = (np.asarray(nib.load(next(group.glob(f"{grid}_desc-SVM_pattern.nii.gz"))).dataobj)[brain]
                      if method == "SVM" else grey_matter_prior(template)[0])
            ratio = (ratio_with_interval(unit_total(single[None]), region, seed)[0], np.nan, np.nan)
        else:  # the per-channel input controls and the baseline deviation: no ratio computed here
            ratio = None
        rows.append({"map": method, "kind": kind,
                     "roc_auc": f"{auc['value']:.2f} [{auc['ci_low']:.2f}, {auc['ci_high']:.2f}]",
                     f"dice@{DICE_PERCENT:g}%": f"{dice['value']:.2f} [{dice['ci_low']:.2f}, {dice['ci_high']:.2f}]",
                     "dice_chance": round(float(dice["chance"]), 3),
                     "ratio": "–" if ratio is None else f"{ratio[0]:.2f} [{ratio[1]:.2f}, {ratio[2]:.2f}]",
                     "beats_control": beats.get(method, ""), "finds": finds.get(method, "")})
    return pd.DataFrame(rows)


def run(root: Path, args: argparse.Namespace, null: bool, sites: int, imbalance: float | None,
        simulate_extra: tuple[str, ...] = (), group_extra: tuple[str, ...] = ()) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Simulate, run both levels; return the cross-validation rows and the recovery table.

    ``simulate_extra`` and ``group_extra``: further options of ``adheat-simulate`` and of the group level (the
    ranking benchmark's ``--twins``, ``--faithfulness``, ...).
    """
    bids, out = root / "bids", root / "out"
    simulate = [bids, "--n-subjects", args.subjects, "--resolution", args.resolution,
                "--seed", args.seed, "--anatomy", *args.anatomy, "--atrophy-model", args.atrophy_model,
                "--sites", sites,
                *(["--site-imbalance", imbalance] if imbalance is not None else []), "--nprocs", args.nprocs]
    if not (bids / "participants.tsv").is_file():  # a kept folder: same cohort, other --input or --methods
        _command(SIMULATE, *simulate, *(["--null"] if null else []), *simulate_extra)
    common = ["--resolution", args.resolution, "--seed", args.seed, "--nprocs", args.nprocs, "--omp-nthreads", 1,
              "--skip-bids-validation"]
    tic = time.perf_counter()
    _command(ADHEAT, bids, out, "participant", *common, "--registration", args.registration)
    participant = time.perf_counter() - tic
    tic = time.perf_counter()
    _command(ADHEAT, bids, out, "group", *common, "--input", args.input,
             *(["--methods", *args.methods] if args.methods else []), *group_extra)
    print(f"participant {participant:.0f} s, group {time.perf_counter() - tic:.0f} s", flush=True)
    metrics = pd.read_csv(out / "group" / "cv_metrics.tsv", sep="\t", dtype={"fold": str})
    pooled = metrics[metrics["fold"] == "pooled"][["model", "roc_auc", "roc_auc_ci_low", "roc_auc_ci_high",
                                                   "p_value", "better_than_chance"]]
    balanced = metrics[metrics["fold"] == "mean"].set_index("model")["balanced_accuracy"]
    pooled = pooled.assign(balanced_accuracy=pooled["model"].map(balanced))
    return pooled, table(out, bids, args.seed)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (and the confounded run) and print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--subjects", type=int, default=120)
    parser.add_argument("--resolution", type=float, default=4.0)
    parser.add_argument("--atrophy-model", default="tissue-loss")
    parser.add_argument("--sites", type=int, default=1)
    parser.add_argument("--site-imbalance", type=float, default=None,
                        help="share of the AD subjects from site 0 (adheat-simulate's default: balanced)")
    parser.add_argument("--null", action="store_true", help="no atrophy")
    parser.add_argument("--confounded", action="store_true",
                        help="also run a null cohort with --site-imbalance 0.8 over 2 sites (or --sites)")
    parser.add_argument("--registration", default="syn", choices=("syn", "affine"))
    parser.add_argument("--input", default="auto", choices=("auto", "intensity", "logjacobian", "both"))
    parser.add_argument("--methods", nargs="+", default=None, help="heatmap methods (default: adheat's)")
    parser.add_argument("--cohort", choices=tuple(COHORTS), default="report",
                        help="development or report cohort (seeds and parents of COHORTS)")
    parser.add_argument("--seed", type=int, default=None, help="default: the cohort's first seed")
    parser.add_argument("--anatomy", nargs="+", default=None, help="parents (default: the cohort's)")
    parser.add_argument("--nprocs", type=int, default=2)
    parser.add_argument("--keep", type=Path, default=None, help="keep the outputs in this folder")
    args = parser.parse_args(argv)
    if args.seed is None:
        args.seed = COHORTS[args.cohort]["seeds"][0]
    if args.anatomy is None:
        args.anatomy = list(COHORTS[args.cohort]["anatomy"])
    runs = [("planted" if not args.null else "null", args.null, args.sites, args.site_imbalance)]
    if args.confounded:
        runs.append(("confounded", True, max(args.sites, 2),
                     0.8 if args.site_imbalance is None else args.site_imbalance))
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        for name, null, sites, imbalance in runs:
            pooled, recovery = run(root / name, args, null, sites, imbalance)
            print(f"\n## {name} ({args.cohort} cohort: seed {args.seed}, parents {' '.join(args.anatomy)}): "
                  f"{args.subjects} subjects, {args.resolution:g} mm, {args.atrophy_model}, "
                  f"{sites} site(s), site imbalance {'balanced' if imbalance is None else imbalance}"
                  f"{', no atrophy' if null else ''}; "
                  f"--registration {args.registration} --input {args.input} (the CNN read: "
                  f"{' + '.join(model_channels(root / name / 'out'))})")
            print(pooled.round(3).to_string(index=False))
            print(recovery.to_string(index=False), flush=True)
    print("\nroc_auc and dice: the group level's values with 95 % bootstrap intervals over subjects (label all, "
          "absolute maps) against the planted truth (probability > 0.5); ratio: mean |relevance| per voxel inside "
          "the planted region over the rest of the brain, 1 = no preference; beats_control: paired ROC AUC "
          "difference with the strongest applicable control (named) above 0; finds: the answer's verdict")
    return 0


if __name__ == "__main__":
    sys.exit(main())
