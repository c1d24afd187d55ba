"""The whole product on a simulated cohort: simulate -> participant -> group -> rerun -> participant with models.

One small cohort at 4 mm runs through the real command line in a subprocess,
as a user runs it. The test checks that every file README.md lists exists,
that the input dataset is untouched, that the outputs are a valid
BIDS-Derivatives dataset, that a rerun skips everything, and that the
participant level with trained models writes the same heatmaps the group
level wrote.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from adheat_app import bids as adheat_bids
from adheat_app.simulate import simulate_cohort
from conftest import tree_digest

pytestmark = pytest.mark.slow

METHODS = ("IG", "LRP", "GGC", "Saliency", "GuidedBackprop", "Occlusion", "AreaOcclusion", "NoiseImportance")
COMMON = ["--resolution", "4", "--skip-bids-validation", "--nprocs", "2", "--omp-nthreads", "1", "--seed", "3"]
#: The default training but for the number of folds (12 subjects), every method, cheaper slow methods.
GROUP = ["--folds", "3", "--methods", *METHODS, "--noise-steps", "10", "--occlusion-size", "24",
         "--occlusion-stride", "24", "--n-bootstrap", "50"]


def adheat(*args: str | Path, expect: int = 0) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, "-m", "adheat_app", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=900)
    assert proc.returncode == expect, proc.stderr[-4000:]
    return proc


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Simulate 12 subjects, then run both levels once (shared by the tests below)."""
    root = tmp_path_factory.mktemp("e2e")
    bids_dir = simulate_cohort(root / "bids", n_subjects=12, resolution=4.0, seed=5, effect_size=0.4, nprocs=2,
                               atrophy_model="darkening")
    before = tree_digest(bids_dir)
    out = root / "out"
    participant = adheat(bids_dir, out, "participant", *COMMON)
    group = adheat(bids_dir, out, "group", *COMMON, *GROUP)
    return {"bids": bids_dir, "out": out, "before": before, "logs": participant.stderr + group.stderr}


def _space_res(out: Path) -> tuple[str, str]:
    name = next(out.glob("sub-*/anat/*_desc-preproc_T1w.nii.gz")).name
    entities = dict(part.split("-", 1) for part in name.split("_")[1:-1])
    return entities["space"], entities["res"]


def test_every_design_output_exists(run):
    out = run["out"]
    space, res = _space_res(out)
    assert res == "4"
    desc = json.loads((out / "dataset_description.json").read_text())
    assert desc["DatasetType"] == "derivative" and desc["GeneratedBy"][0]["Name"] == "adheat"
    for name in ("CITATION.md", "CITATION.bib"):
        assert (out / "logs" / name).stat().st_size > 200
    assert list((out / "logs").glob("config-*.toml")) and list((out / "logs").glob("adheat-*.log"))
    citation = (out / "logs" / "CITATION.md").read_text()
    for step in ("Anatomical preprocessing", "Classification", "Heatmaps", "Evaluation"):
        assert step in citation
    if space == "MNI152NLin2009cAsym":  # the template the run used, from where (conftest's TemplateFlow home)
        assert "ICBM 2009c nonlinear asymmetric template" in citation and "obtained through TemplateFlow" in citation
    else:
        assert space == "MNI152NLin2009aSym" and "the copy distributed with Nilearn" in citation
    assert f"`{space}`" in citation and f"template: {space} from" in (out / "group.html").read_text()
    subjects = sorted(p.name for p in out.glob("sub-*") if p.is_dir())
    assert len(subjects) == 12
    for sub in subjects:
        anat = out / sub / "anat"
        prefix = f"{sub}_space-{space}_res-{res}"
        for name in (f"{prefix}_desc-preproc_T1w", f"{prefix}_desc-brain_mask",
                     *(f"{prefix}_desc-{m}_heatmap" for m in METHODS)):
            assert (anat / f"{name}.nii.gz").is_file(), name
            assert (anat / f"{name}.json").is_file(), name
        assert (anat / f"{sub}_from-T1w_to-{space}_mode-image_xfm.h5").is_file()
        assert (out / f"{sub}.html").is_file()
    for k in range(3):
        fold = out / "models" / "resnet3d" / f"fold-{k}"
        for name in ("model.pt", "model.json", "split.tsv"):
            assert (fold / name).is_file()
    group = out / "group"
    for name in ("cv_metrics.tsv", "predictions.tsv", "overlap.tsv", "overlap_differences.tsv", "answer.tsv",
                 "regions.tsv", "distances.tsv", "preproc_qc.tsv", "covariates_nested_test.tsv"):
        assert (group / name).is_file(), name
    for method in METHODS:
        for label in ("AD", "CN"):
            name = f"space-{space}_res-{res}_label-{label}_desc-{method}_stat-mean_heatmap.nii.gz"
            assert (group / method / name).is_file()
    assert (group / f"space-{space}_res-{res}_desc-SVM_pattern.nii.gz").is_file()
    assert (out / "group.html").stat().st_size > 10_000


def test_logs_name_no_absent_quantity(run):
    """Trained without a validation split (the default): no epoch line reports a validation loss of nan."""
    logs = run["logs"] + "".join(p.read_text() for p in (run["out"] / "logs").glob("adheat-*.log"))
    assert "train loss" in logs and "val loss" not in logs
    assert not re.search(r"\bnan\b", logs, re.IGNORECASE), re.search(r".*\bnan\b.*", logs, re.IGNORECASE).group(0)


def test_tables_hold_both_models_and_every_method(run):
    group = run["out"] / "group"
    metrics = pd.read_csv(group / "cv_metrics.tsv", sep="\t", dtype={"fold": str})
    # the simulated participants.tsv has age and sex (one site: no site control), and both together
    assert set(metrics["model"]) == {"resnet3d", "SVM", "covariate-age", "covariate-sex", "covariate-all"}
    assert set(metrics["fold"]) >= {"0", "1", "2", "mean", "sd"}
    predictions = pd.read_csv(group / "predictions.tsv", sep="\t", dtype={"subject": str})
    assert len(predictions[predictions["model"] == "resnet3d"]) == 12
    overlap = pd.read_csv(group / "overlap.tsv", sep="\t")
    assert set(METHODS) <= set(overlap["method"])


def test_bids_dir_is_untouched(run):
    assert tree_digest(run["bids"]) == run["before"]


@pytest.mark.skipif(adheat_bids.validator_command() is None, reason="bids-validator-deno is not installed")
def test_outputs_are_valid_bids_derivatives(run):
    proc = subprocess.run([*adheat_bids.validator_command(), "--format", "json", "--ignoreWarnings",
                           "--datasetTypes", "derivative", str(run["out"])], capture_output=True, text=True)
    issues = json.loads(proc.stdout)["issues"]["issues"]
    errors = [i for i in issues if i.get("severity") == "error"]
    assert not errors, errors[:5]


def test_progress_is_logged(run):
    assert "sub-" in run["logs"] and "fold" in run["logs"].lower()


def test_rerun_skips_everything_and_changes_nothing(run):
    out = run["out"]
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.nii.gz")}
    adheat(run["bids"], out, "participant", "group", *COMMON, *GROUP)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.nii.gz")} == stamps


def test_participant_level_with_models_writes_the_same_heatmaps(run, tmp_path):
    """A fresh output folder: preprocess one subject, then derive its heatmaps from the trained models."""
    out2 = tmp_path / "out2"
    sub = "01"
    adheat(run["bids"], out2, "participant", "--participant-label", sub, "--models", run["out"] / "models",
           *COMMON, *GROUP)
    space, res = _space_res(run["out"])
    for method in ("IG", "LRP", "GGC"):
        name = f"sub-{sub}/anat/sub-{sub}_space-{space}_res-{res}_desc-{method}_heatmap.nii.gz"
        first = np.asarray(nib.load(run["out"] / name).dataobj)
        second = np.asarray(nib.load(out2 / name).dataobj)
        assert np.array_equal(first, second), method


def test_default_input_after_syn_is_both_channels(run):
    """The default --input auto after SyN registration: two-channel models, per-channel and summed heatmaps and
    SVM patterns, all scored by the group level (the participant level's models test above reads both channels
    from the model cards)."""
    out = run["out"]
    space, res = _space_res(out)
    assert "--input auto: both (intensity and log Jacobian) for all 12 scans" in run["logs"]
    card = json.loads((out / "models" / "resnet3d" / "fold-0" / "model.json").read_text())
    assert card["Input"]["Channels"] == ["intensity", "logjacobian"] and card["Input"]["Layout"] == "N,C,X,Y,Z"
    anat = out / "sub-01" / "anat"
    for method in METHODS:
        maps = {d: np.asarray(nib.load(anat / f"sub-01_space-{space}_res-{res}_desc-{d}_heatmap.nii.gz").dataobj)
                for d in (method, f"{method}intensity", f"{method}logjacobian")}
        np.testing.assert_allclose(maps[method], maps[f"{method}intensity"] + maps[f"{method}logjacobian"],
                                   atol=1e-5, err_msg=method)
    assert np.abs(maps[f"{method}logjacobian"]).max() > 0
    side = json.loads((anat / f"sub-01_space-{space}_res-{res}_desc-IG_heatmap.json").read_text())
    assert side["Input"] == "both" and side["ChannelsSummed"] is True
    assert any("desc-logjacobian" in source for source in side["Sources"])
    for name in ("SVM", "SVMintensity", "SVMlogjacobian"):
        assert (out / "group" / f"space-{space}_res-{res}_desc-{name}_pattern.nii.gz").is_file(), name
    overlap = pd.read_csv(out / "group" / "overlap.tsv", sep="\t")
    assert {"IG", "IGintensity", "IGlogjacobian", "Saliency", "SVM"} <= set(overlap["method"])
    svm = overlap[(overlap["method"] == "SVM") & (overlap["metric"] == "roc_auc")]
    assert svm["ci_low"].notna().all()  # the two-channel pattern is bootstrapped too
    assert "two channels: the preprocessed T1w image and the log Jacobian" in (out / "logs" / "CITATION.md").read_text()
