"""Benchmark: rank the heatmap methods on localisation, faithfulness and randomisation, over several cohort seeds.

For each seed of a cohort of ``ground_truth.COHORTS`` (``report``: five seeds on a parent never used to choose
anything; ``development``: the seeds the defaults may be tuned on) the folder ``ROOT/<cohort>-<seed>`` holds
``bids`` (``adheat-simulate`` with ``--twins``) and ``out`` (``adheat participant``, then ``adheat group``
with ``--methods IG Saliency SmoothGrad LRP GGC GuidedBackprop --lrp-rule epsilonplusflat --faithfulness
--sanity-check``): ``--run`` makes the missing
ones through ``ground_truth.run`` (40 subjects, 4 mm, 2 processes); a folder whose group level has written
``group/overlap.tsv`` is reused. Every heatmap method the runs wrote (channel-summed maps, controls aside) is
scored on nine criteria:

- localisation (against the planted truth, absolute maps): ``group AUC``, the ROC AUC of the label-``all``
  group map against the cohort's truth (``group/overlap.tsv``, 95 % bootstrap interval over subjects);
  per AD subject against that subject's own truth (its region map, ``derivatives/simulation``, at the
  product's threshold), scored by the product's :class:`SubjectScorer` on each subject's out-of-fold map:
  ``subject AUC``, ``mass accuracy`` (share of the map's total relevance inside the truth) and ``rank
  accuracy`` (share of the truth-sized top set inside the truth; both Arras et al. 2022), means over subjects
  with 95 % basic bootstrap intervals over subjects. Competitor: the strongest applicable control
  (grey-matter prior, input magnitude, baseline deviation, the method's own randomised-model and
  permuted-label maps; :func:`~adheat_app.evaluation.answer.strongest_control`) and chance;
- faithfulness: ``AOPC regions`` and ``AOPC blocks``, the deletion AOPC of the most-relevant-first order minus
  the random order's (paired per subject, so the competitor is subtracted; ``group/faithfulness.tsv``); ``twin
  share``, the share of the disease's effect on the model carried by the map's top region
  (``group/twin_test.tsv``; competitor: random grey-matter regions of the same size);
- randomisation (lower is better, Adebayo et al. 2018): ``sim. random model`` and ``sim. permuted labels``,
  the Spearman correlation of each subject's absolute map with the same method's map of the fully randomised
  model (``<Method>Random``) and of the permuted-label models (``<Method>PermutedLabels``) inside the scan's
  brain mask (the sanity check's similarity), mean over the
  subjects of the two classes (the held-out scans; MCI scans are left out, as by the faithfulness tables) with a
  95 % basic bootstrap interval over subjects.

Per seed and criterion the methods are ranked (``ranking_maths``: 1 = best, ties share their mean rank; only
the methods that have every criterion the seed has are ranked, a map left over from another run with other
``--methods`` is shown "not ranked"), the overall rank is the mean of a method's criterion ranks,
and Kendall's tau-b compares every pair of seeds' overall (and per-criterion) rankings. Printed as Markdown:
each seed's table (value [95 % interval], a ``*`` where the map beats its competitor: the paired interval
above 0), then per cohort the mean over seeds of each criterion with the range of the per-seed values, the
number of seeds where the competitor was beaten, the mean overall rank with its range, and tau. A criterion
a seed lacks (a run without ``--faithfulness``, twins or ``--sanity-check``) is named under its table and
the summary counts the seeds that have it. Not a test: numbers depend on the cohort draws and the machine.

Usage::

    python benchmarks/ranking.py --root ROOT [--cohort report development] [--seeds 101 202] [--run]
        [--n-bootstrap 1000]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

import ground_truth
from ranking_maths import comparable, criterion_ranks, kendall_pairs, over_seeds, overall_ranks
from adheat_app.attribution.sanity import rank_correlation
from adheat_app.bids import Derivatives, T1wInput
from adheat_app.cohort import load_cohort
from adheat_app.config import build_config
from adheat_app.evaluation.answer import holm_reachable, strongest_control
from adheat_app.evaluation.controls import (
    BASELINE_DEVIATION, GREY_MATTER_PRIOR, INPUT_MAGNITUDE, fold_baselines, grey_matter_prior, input_controls,
    is_control,
)
from adheat_app.evaluation.group_maps import load_method
from adheat_app.evaluation.overlap import resample_counts
from adheat_app.evaluation.references import REFERENCES
from adheat_app.evaluation.references._contract import Context
from adheat_app.evaluation.subject_scores import SubjectScorer, summarise
from adheat_app.inputs import load_inputs
from adheat_app.io import read_json
from adheat_app.layout import (
    ANSWER, CONTROLS, CV_METRICS, FAITHFULNESS, OVERLAP, TWIN_TEST, MapName, find_preproc, group_table, heatmap_methods,
    heatmap_path, simulation_root, to_label, trained_models,
)
from adheat_app.templates import get_template, parse_resolution

#: The commands of one seed beyond ``ground_truth.run``'s: twins in the cohort, the methods ranked (those of the
#: measured runs: Occlusion, AreaOcclusion and NoiseImportance are left out), the LRP composite, the faithfulness
#: curves and the randomisation controls.
SIMULATE_EXTRA = ("--twins",)
METHODS = ("IG", "Saliency", "SmoothGrad", "LRP", "GGC", "GuidedBackprop")
GROUP_EXTRA = ("--lrp-rule", "epsilonplusflat", "--faithfulness", "--sanity-check")
SUBJECTS, RESOLUTION, NPROCS = 40, 4.0, 2
#: Criteria in table order: name -> (family, lower is better).
CRITERIA = {"group AUC": ("localisation", False), "subject AUC": ("localisation", False),
            "mass accuracy": ("localisation", False), "rank accuracy": ("localisation", False),
            "AOPC regions": ("faithfulness", False), "AOPC blocks": ("faithfulness", False),
            "twin share": ("faithfulness", False),
            "sim. random model": ("randomisation", True), "sim. permuted labels": ("randomisation", True)}
SUBJECT_METRICS = {"subject AUC": "roc_auc", "mass accuracy": "mass_inside", "rank accuracy": "rank_accuracy"}
#: The answer's verdict on the group map (``finds_reference``): shown beside the criteria, not ranked.
FINDS = "finds (answer)"
NOT_RANKED = "not ranked"
RANDOMISATION = {"sim. random model": CONTROLS[0], "sim. permuted labels": CONTROLS[1]}
COLUMNS = ["method", "criterion", "value", "ci_low", "ci_high", "beats", "competitor", "competitor_value"]


def folder(root: Path, cohort: str, seed: int) -> Path:
    """``ROOT/<cohort>-<seed>``: one seed's ``bids`` and ``out``."""
    return root / f"{cohort}-{seed}"


def finished(run: Path) -> bool:
    """Whether a seed's group level has scored its maps (``group/overlap.tsv``: the last table before the report)."""
    return group_table(run / "out", OVERLAP).is_file()


def run_seed(run: Path, cohort: str, seed: int) -> None:
    """Simulate and run both levels of one seed through ``ground_truth.run`` with this benchmark's options."""
    args = argparse.Namespace(subjects=SUBJECTS, resolution=RESOLUTION, seed=seed,
                              anatomy=list(ground_truth.COHORTS[cohort]["anatomy"]), atrophy_model="tissue-loss",
                              nprocs=NPROCS, registration="syn", input="auto", methods=list(METHODS))
    ground_truth.run(run, args, False, 1, None, SIMULATE_EXTRA, GROUP_EXTRA)


@dataclasses.dataclass
class Run:
    """One finished seed as the product reads it: configuration, cohort, template, the methods' names."""

    config: object
    derivs: Derivatives
    cohort: object
    template: object
    methods: list[str]

    @classmethod
    def load(cls, run: Path, seed: int, work: Path) -> Run:
        """The cohort of ``run/out`` (its preprocessed scans, the CNN's input channels, the trained model)."""
        bids, out = run / "bids", run / "out"
        model = trained_models(out / "models")[0]
        config = build_config(bids, out, ("group",), {"execution": {"seed": seed, "work_dir": str(work)},
                                                      "training": {"model": model}}, {})
        inputs = [T1wInput(name.get("sub"), name.get("ses"), path) for path, name in find_preproc(out)]
        derivs = Derivatives(out, bids)
        cohort = load_cohort(config, derivs, inputs)
        cohort = dataclasses.replace(cohort, channels=ground_truth.model_channels(out))
        template = get_template(parse_resolution(cohort.res_label), space=cohort.space)
        methods = [m for m in heatmap_methods(out, cohort.space, cohort.res_label)
                   if not is_control(m) and MapName.parse(m).channel is None]
        return cls(config, derivs, cohort, template, methods)

    def maps(self, name: str):
        """Every scan's normalised absolute map of ``name`` (:func:`load_method`), None when there is none."""
        return load_method(self.derivs, self.cohort, self.template, name, {})


def group_auc(run: Run) -> list[dict]:
    """The group map's ROC AUC against the cohort's truth, its strongest control and the answer's verdict
    (``group/overlap.tsv``, ``group/answer.tsv``; a ``finds`` row per method, not ranked, None for a primary row
    when the run's resamples cannot pass Holm's correction, :func:`holm_reachable`)."""
    table = pd.read_csv(group_table(run.derivs.root, OVERLAP), sep="\t", na_values=["n/a"])
    rows = table[(table["reference"] == "simulation") & (table["label"] == "all") & (table["sign"] == "absolute")
                 & (table["metric"] == "roc_auc")]
    value = rows.set_index("method")["value"]
    answer = pd.read_csv(group_table(run.derivs.root, ANSWER), sep="\t", na_values=["n/a"])
    reachable = holm_reachable(int(rows["n_bootstrap"].max()), int(answer["primary"].astype(bool).sum()))
    answer = answer[(answer["reference"] == "simulation") & (answer["sign"] == "absolute")].set_index("method")
    out = []
    for row in rows[rows["method"].isin(run.methods)].itertuples(index=False):
        verdict = answer.loc[row.method] if row.method in answer.index else None
        control = verdict["control"] if verdict is not None else strongest_control(rows, row.method)
        out.append({"method": row.method, "criterion": "group AUC", "value": row.value, "ci_low": row.ci_low,
                    "ci_high": row.ci_high, "competitor": control, "competitor_value": value.get(control, np.nan),
                    "chance": row.chance, "beats": None if verdict is None else bool(verdict["above_control"])})
        if verdict is not None:  # a primary row cannot pass Holm's step with too few resamples: no verdict
            known = reachable or not bool(verdict["primary"])
            out.append({"method": row.method, "criterion": FINDS,
                        "beats": bool(verdict["finds_reference"]) if known else None})
    return out


def subject_localisation(run: Run, n_bootstrap: int, seed: int) -> list[dict]:
    """Each AD subject's map against its own truth (:class:`SubjectScorer`): ROC AUC, mass and rank accuracy."""
    context = Context(run.config, run.derivs, run.cohort, run.template, compute=False)
    truths = REFERENCES["simulation"].load_subjects(context)
    if not truths:
        return []
    mask = run.template.mask_array()
    scorer = SubjectScorer({"simulation": truths}, run.cohort, mask)
    for method in run.methods:
        for name in (method, *(MapName(method, control).desc for control in CONTROLS)):
            maps = run.maps(name)
            if maps is not None:
                scorer.score(name, "method" if name == method else "control", "absolute",
                             [s.key for s in maps.scans], maps.values)
    index = {s.key: i for i, s in enumerate(run.cohort.scans)}
    rows = [index[key] for key in scorer.keys]
    inputs = load_inputs(run.cohort.scans, run.cohort.channels, run.config.work_dir)
    values = np.asarray(inputs[rows][:, :, mask], dtype=np.float32)
    controls = input_controls(np.abs(values), run.cohort.channels, INPUT_MAGNITUDE)
    baselines = fold_baselines(run.config, run.cohort, inputs, mask)
    if baselines is not None:
        means, position = baselines
        controls.update(input_controls(np.abs(values - means[position[rows]]), run.cohort.channels,
                                       BASELINE_DEVIATION))
    for name, maps in controls.items():
        scorer.score(name, "control", "absolute", scorer.keys, maps)
    scorer.constant(GREY_MATTER_PRIOR, "control", grey_matter_prior(run.template)[0])
    table = scorer.table(n_bootstrap, seed)
    table = table[(table["label"] == to_label(run.cohort.positive_label)) & (table["sign"] == "absolute")]
    out = []
    for criterion, metric in SUBJECT_METRICS.items():
        rows_of = table[table["metric"] == metric].set_index("method")
        for method in run.methods:
            if method in rows_of.index:
                row = rows_of.loc[method]
                out.append({"method": method, "criterion": criterion, "value": row["subject_mean"],
                            "ci_low": row["ci_low"], "ci_high": row["ci_high"],
                            "beats": bool(row["vs_control_ci_low"] > 0), "competitor": row["control"],
                            "competitor_value": rows_of["subject_mean"].get(row["control"], np.nan),
                            "chance": row["chance"]})
    return out


def faithfulness(run: Run) -> list[dict]:
    """Most-relevant-first deletion AOPC minus the random order's, per unit kind (``group/faithfulness.tsv``)."""
    path = group_table(run.derivs.root, FAITHFULNESS)
    if not path.is_file():
        return []
    table = pd.read_csv(path, sep="\t")
    table = table[(table["order"] == "morf") & table["method"].isin(run.methods)]
    return [{"method": row.method, "criterion": f"AOPC {row.units}", "value": row.deletion_aopc_vs_random,
             "ci_low": row.deletion_aopc_vs_random_ci_low, "ci_high": row.deletion_aopc_vs_random_ci_high,
             "beats": bool(row.deletion_aopc_vs_random_ci_low > 0), "competitor": "random order (subtracted)",
             "competitor_value": 0.0} for row in table.itertuples(index=False)]


def twin_share(run: Run) -> list[dict]:
    """The share of the disease's effect carried by each map's top region, against random regions."""
    path = group_table(run.derivs.root, TWIN_TEST)
    if not path.is_file():
        return []
    table = pd.read_csv(path, sep="\t")
    return [{"method": row.method, "criterion": "twin share", "value": row.share, "ci_low": row.share_ci_low,
             "ci_high": row.share_ci_high, "beats": bool(row.above_random), "competitor": "random regions",
             "competitor_value": row.random_share}
            for row in table[table["method"].isin(run.methods)].itertuples(index=False)]


def randomisation(run: Run, n_bootstrap: int, seed: int) -> list[dict]:
    """Spearman similarity of each labelled subject's map with its randomised-model and permuted-label maps, inside
    the scan's own brain mask (:func:`~adheat_app.attribution.sanity.rank_correlation`, as the sanity check)."""
    scans = [s for s in run.cohort.scans if s.target is not None]
    masks: dict[str, np.ndarray] = {}

    def read(scan, name: str) -> np.ndarray | None:
        path = heatmap_path(run.derivs.root, scan, run.cohort.space, run.cohort.res_label, name)
        return np.asarray(nib.load(path).dataobj, np.float32) if path.is_file() else None

    out = []
    for method in run.methods:
        for criterion, control in RANDOMISATION.items():
            pairs = []
            for scan in scans:
                trained, randomised = read(scan, method), read(scan, MapName(method, control).desc)
                if trained is not None and randomised is not None:
                    if scan.key not in masks:
                        masks[scan.key] = np.asarray(nib.load(scan.mask).dataobj) > 0
                    pairs.append((scan.subject, rank_correlation(trained, randomised, masks[scan.key])))
            if not pairs:
                continue
            subjects = sorted({subject for subject, _ in pairs})
            per_subject = np.array([np.mean([v for s, v in pairs if s == subject]) for subject in subjects])
            mean, _, low, high, _ = summarise(per_subject, resample_counts(subjects, n_bootstrap, seed), (-1.0, 1.0))
            out.append({"method": method, "criterion": criterion, "value": float(mean), "ci_low": float(low),
                        "ci_high": float(high), "competitor": "", "competitor_value": np.nan})
    return out


def seed_criteria(run_dir: Path, seed: int, n_bootstrap: int) -> tuple[pd.DataFrame, dict]:
    """Every criterion of every method of one finished seed (long table), and the seed's facts for its heading."""
    with tempfile.TemporaryDirectory() as work:
        run = Run.load(run_dir, seed, Path(work))
        rows = [*group_auc(run), *subject_localisation(run, n_bootstrap, seed), *faithfulness(run), *twin_share(run),
                *randomisation(run, n_bootstrap, seed)]
    metrics = pd.read_csv(group_table(run.derivs.root, CV_METRICS), sep="\t", dtype={"fold": str})
    cnn = metrics[(metrics["fold"] == "pooled") & (metrics["model"] == run.config.training.model)].iloc[0]
    simulation = read_json(simulation_root(run.derivs.bids_dir) / "dataset_description.json")["Simulation"]
    resamples = int(pd.read_csv(group_table(run.derivs.root, OVERLAP), sep="\t", usecols=["n_bootstrap"]).max().iloc[0])
    facts = {"parents": " ".join(simulation["anatomy"]), "scans": len(run.cohort.scans), "resamples": resamples,
             "cnn": f"{cnn['roc_auc']:.2f} [{cnn['roc_auc_ci_low']:.2f}, {cnn['roc_auc_ci_high']:.2f}]"}
    return pd.DataFrame(rows).reindex(columns=[*COLUMNS, "chance"]), facts


def wide(criteria: pd.DataFrame, column: str = "value") -> pd.DataFrame:
    """Methods by criteria (in :data:`CRITERIA` order) of one numeric column of a seed's long table."""
    return pd.DataFrame({c: _column(criteria, column, c) for c in CRITERIA}).reindex(
        sorted(set(criteria["method"])))


def ranks_of(criteria: pd.DataFrame) -> pd.DataFrame:
    """The criterion ranks and the overall rank (column ``overall``) of one seed's :func:`comparable` methods
    (every method of the seed is a row; those not comparable have no ranks)."""
    values = wide(criteria)
    ranks = criterion_ranks(comparable(values), [c for c, (_, lower) in CRITERIA.items() if lower])
    return ranks.assign(overall=overall_ranks(ranks)).reindex(index=values.index, columns=[*CRITERIA, "overall"])


def _cell(value: float, low: float = np.nan, high: float = np.nan, digits: int = 2) -> str:
    if not np.isfinite(value):
        return "–"
    text = f"{value:.{digits}f}"
    return text + (f" [{low:.{digits}f}, {high:.{digits}f}]" if np.isfinite(low) and np.isfinite(high) else "")


def markdown(table: pd.DataFrame) -> str:
    """A DataFrame as a Markdown table (index as the first column)."""
    head = [table.index.name or "", *map(str, table.columns)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join([str(i), *map(str, row)]) + " |" for i, row in zip(table.index, table.values)]
    return "\n".join(lines)


def seed_table(criteria: pd.DataFrame, ranks: pd.DataFrame) -> pd.DataFrame:
    """One seed's Markdown-ready table: each criterion's value [interval] (``*``: beats its competitor), the
    answer's verdict, the overall rank, then :func:`reference_rows`."""
    cells = {}
    for row in criteria.itertuples(index=False):
        mark = "*" if row.beats is True else ""
        cells[(row.method, row.criterion)] = ({True: "yes", False: "no"}.get(row.beats, "n/a (Holm)")
                                              if row.criterion == FINDS
                                              else _cell(row.value, row.ci_low, row.ci_high) + mark)
    columns = [*CRITERIA, FINDS]
    methods = ranks.sort_values("overall").index
    table = pd.DataFrame([[cells.get((m, c), "–") for c in columns]
                          + [_cell(ranks.loc[m, "overall"], digits=1).replace("–", NOT_RANKED)]
                          for m in methods], index=methods, columns=[*columns, "overall rank"])
    table = pd.concat([table, reference_rows(criteria, table.columns)])
    table.index.name = "method"
    return table


def reference_rows(criteria: pd.DataFrame, columns: pd.Index) -> pd.DataFrame:
    """The rows under a table: each criterion's chance level (mean) and its competitors' values (the strongest
    control, random order or random regions of each method; range over the methods, and seeds) of long rows."""
    chance = criteria.groupby("criterion")["chance"].mean()
    competitor = criteria.groupby("criterion")["competitor_value"].agg(["min", "max"])
    rows = {"chance": {c: _cell(chance.get(c, np.nan)) for c in CRITERIA},
            "competitor (range)": {c: f"{competitor.loc[c, 'min']:.2f}–{competitor.loc[c, 'max']:.2f}"
                                   if c in competitor.index and np.isfinite(competitor.loc[c, "min"]) else "–"
                                   for c in CRITERIA}}
    return pd.DataFrame(rows, dtype=object).T.reindex(columns=columns, fill_value="")


def summary_table(per_seed: dict[int, pd.DataFrame], ranks: dict[int, pd.DataFrame]) -> pd.DataFrame:
    """Per method over seeds: each criterion's mean [range of per-seed values] and the seeds where it beats its
    competitor, the seeds where the answer says it finds the truth, then the mean overall rank [range]; sorted by
    the mean overall rank; then :func:`reference_rows` over every seed."""
    n = len(per_seed)
    overall = over_seeds({seed: r["overall"] for seed, r in ranks.items()}).sort_values("mean")
    table = pd.DataFrame(index=overall.index, columns=[*CRITERIA, FINDS, "overall rank"], dtype=object)
    for criterion in [*CRITERIA, FINDS]:
        spread = over_seeds({seed: _column(c, "value", criterion) for seed, c in per_seed.items()})
        beats = pd.DataFrame({seed: _column(c, "beats", criterion) for seed, c in per_seed.items()})
        for method in table.index:
            known = beats.loc[method].dropna() if method in beats.index else pd.Series(dtype=object)
            wins = f"{int((known == True).sum())}/{len(known)}" if len(known) else ""  # noqa: E712 (objects)
            if criterion == FINDS:
                table.loc[method, criterion] = wins or "–"
            elif method not in spread.index or not spread.loc[method, "n_seeds"]:
                table.loc[method, criterion] = "–"
            else:
                s = spread.loc[method]
                table.loc[method, criterion] = " ".join(filter(None, (
                    _cell(s["mean"], s["low"], s["high"]), wins,
                    f"({int(s['n_seeds'])} of {n} seeds)" if s["n_seeds"] < n else "")))
    for method in table.index:
        s = overall.loc[method]
        table.loc[method, "overall rank"] = (_cell(s["mean"], s["low"], s["high"], digits=1)
                                             + (f" ({int(s['n_seeds'])} of {n} seeds)" if 0 < s["n_seeds"] < n
                                                else "")).replace("–", NOT_RANKED)
    table = pd.concat([table, reference_rows(pd.concat(per_seed.values()), table.columns)])
    table.index.name = "method"
    return table


def _column(criteria: pd.DataFrame, column: str, criterion: str) -> pd.Series:
    """One column of one criterion's rows of a seed's long table, by method."""
    rows = criteria[criteria["criterion"] == criterion]
    return pd.Series(rows[column].to_numpy(), index=rows["method"].to_numpy(), dtype=object if column == "beats"
                     else float)


def tau_table(ranks: dict[int, pd.DataFrame]) -> pd.DataFrame:
    """Kendall's tau between every pair of seeds, per criterion and overall: mean [range] and pairs."""
    rows = {}
    for criterion in [*CRITERIA, "overall"]:
        pairs = kendall_pairs({seed: r[criterion] for seed, r in ranks.items()})["tau"].dropna()
        rows[criterion] = {"tau": _cell(pairs.mean(), pairs.min(), pairs.max()) if len(pairs) else "–",
                           "pairs of seeds": len(pairs)}
    table = pd.DataFrame(rows).T
    table.index.name = "ranking"
    return table


def report_cohort(root: Path, cohort: str, seeds: list[int], n_bootstrap: int) -> None:
    """Print the per-seed tables of one cohort's ``seeds``, their summary and Kendall's tau."""
    per_seed, ranks = {}, {}
    for seed in seeds:
        run = folder(root, cohort, seed)
        if not finished(run):
            print(f"\n{cohort} seed {seed}: {run} not finished, left out", flush=True)
            continue
        criteria, facts = seed_criteria(run, seed, n_bootstrap)
        per_seed[seed], ranks[seed] = criteria, ranks_of(criteria)
        missing = [c for c in CRITERIA if c not in set(criteria["criterion"])]
        print(f"\n### {cohort} cohort, seed {seed}: parents {facts['parents']}, {facts['scans']} scans, "
              f"{RESOLUTION:g} mm; CNN pooled ROC AUC {facts['cnn']}; the group level's tables with "
              f"{facts['resamples']} bootstrap resamples, this benchmark's subject criteria with {n_bootstrap}\n")
        print(markdown(seed_table(criteria, ranks[seed])))
        if missing:
            print(f"\nmissing criteria (this run lacks their tables or maps): {', '.join(missing)}")
    if not per_seed:
        return
    label = "report cohorts (README)" if cohort == "report" else "development cohorts (may choose defaults)"
    print(f"\n## Ranking, {label}: seeds {', '.join(map(str, per_seed))}\n")
    print(markdown(summary_table(per_seed, ranks)))
    print(f"\n### Kendall's tau between the seeds' rankings ({label})\n")
    print(markdown(tau_table(ranks)), flush=True)


def main(argv: list[str] | None = None) -> int:
    """Run the missing seeds (``--run``), then print every cohort's tables."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, required=True, help="folder of the <cohort>-<seed> runs")
    parser.add_argument("--cohort", nargs="+", choices=tuple(ground_truth.COHORTS), default=["report", "development"])
    parser.add_argument("--seeds", type=int, nargs="+", default=None,
                        help="only these seeds of the cohorts (default: every seed whose folder is finished)")
    parser.add_argument("--run", action="store_true", help="simulate and run the seeds that are not finished")
    parser.add_argument("--n-bootstrap", type=int, default=1000)
    args = parser.parse_args(argv)
    seeds = {cohort: [s for s in ground_truth.COHORTS[cohort]["seeds"] if args.seeds is None or s in args.seeds]
             for cohort in args.cohort}
    for cohort, chosen in seeds.items():
        for seed in chosen:
            run = folder(args.root, cohort, seed)
            if args.run and not finished(run):
                run_seed(run, cohort, seed)
    for cohort, chosen in seeds.items():
        report_cohort(args.root, cohort, chosen, args.n_bootstrap)
    print("\nValues: localisation against the planted truth (absolute maps; group AUC: the label-all group map, "
          "subject criteria: each AD subject's out-of-fold map against its own truth, mean over subjects); AOPC: "
          "most-relevant-first deletion AOPC minus the random order's; twin share: share of the disease's effect "
          "in the map's top region; sim.: Spearman similarity with the randomised-model / permuted-label maps "
          "(lower is better). Per seed: [95 % bootstrap interval over subjects]; * = beats its competitor (paired "
          "interval above 0: the strongest applicable control, the random order, random regions). Over seeds: "
          "mean [range of the per-seed values], k/n = seeds where it beat its competitor. finds (answer): the "
          "group answer's verdict (n/a (Holm): a default method's map, which no run with too few resamples can "
          "pass Holm's step with; over seeds: of the seeds with a verdict). Ranks: 1 = best per "
          "criterion, ties share their mean rank; overall = mean of the criterion ranks a method has; "
          "tau: Kendall's tau-b between pairs of seeds.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
