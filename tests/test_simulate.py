"""The simulator (``adheat-simulate``): valid BIDS, measurable planted atrophy, reproducibility, options, errors.

Every cohort here is on the 4 mm grid with a handful of subjects, built from the
real 2009c template where ``../shared/data`` is present (the offline fallback
template otherwise). One module-scoped cohort with two sessions and an MCI
subject serves most tests; the reproducibility, ``nprocs`` and ``null`` tests
each simulate one more small cohort.
"""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from adheat_app import simulate
from adheat_app.bids import run_bids_validator, validator_command
from conftest import tree_digest

RESOLUTION = 4.0
N_SUBJECTS = 6
N_MCI = 1
SESSIONS = 2
SEED = 7
EFFECT = 0.3


def plan() -> list[simulate.SubjectSpec]:
    """The plan of the module's cohort."""
    return simulate.plan_cohort(N_SUBJECTS, seed=SEED, effect_size=EFFECT, n_mci=N_MCI, sessions=SESSIONS)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """6 AD/CN subjects and 1 MCI, 2 sessions each, simulated serially."""
    root = tmp_path_factory.mktemp("sim") / "bids"
    out = simulate.simulate_cohort(root, n_subjects=N_SUBJECTS, resolution=RESOLUTION, seed=SEED,
                                   effect_size=EFFECT, sessions=SESSIONS, n_mci=N_MCI, nprocs=1)
    return out


@pytest.fixture(scope="module")
def truth(cohort):
    return simulate.build_ground_truth(RESOLUTION)


def native(cohort, spec, session="01", desc=None) -> np.ndarray:
    """A scan (or, with ``desc``, its truth mask) as an array."""
    name = f"sub-{spec.label}_ses-{session}"
    if desc is None:
        path = cohort / f"sub-{spec.label}" / f"ses-{session}" / "anat" / f"{name}_T1w.nii.gz"
    else:
        path = (cohort / "derivatives" / "simulation" / f"sub-{spec.label}" / f"ses-{session}" / "anat"
                / f"{name}_desc-{desc}_mask.nii.gz")
    return np.asarray(nib.load(path).dataobj)


def test_pybids_finds_every_t1w_and_the_tables_match_the_plan(cohort):
    from bids import BIDSLayout

    layout = BIDSLayout(cohort, validate=False)
    specs = plan()
    assert layout.get_subjects() == [s.label for s in specs]
    assert layout.get_sessions() == ["01", "02"]
    files = layout.get(suffix="T1w", extension=".nii.gz", return_type="filename")
    assert len(files) == len(specs) * SESSIONS
    table = pd.read_csv(cohort / "participants.tsv", sep="\t", dtype=str)
    assert list(table["participant_id"]) == [s.participant_id for s in specs]
    assert table["diagnosis"].value_counts().to_dict() == {"AD": 3, "CN": 3, "MCI": 1}
    assert set(table["sex"]) <= {"F", "M"} and table["age"].astype(int).between(60, 85).all()
    loss = pd.read_csv(cohort / "derivatives" / "simulation" / "participants.tsv", sep="\t")
    assert np.allclose(loss["intensity_loss"], [s.intensity_loss for s in specs], atol=1e-6)
    description = json.loads((cohort / "dataset_description.json").read_text())
    assert description["DatasetType"] == "raw" and description["GeneratedBy"][0]["Name"] == "adheat-simulate"


def test_official_validator_passes(cohort):
    if validator_command() is None:
        pytest.skip("bids-validator-deno is not installed (pip install bids-validator-deno)")
    run_bids_validator(cohort)  # raises InputError listing the errors otherwise


def test_planted_loss_in_template_space_is_the_effect_size(cohort, truth):
    """L_s = 1 - mean_R(T_s) / mean_R(T) equals severity x e; AD minus CN differs by the AD mean loss."""
    region = truth.region
    reference = float(truth.intensity[region].mean())
    means = {}
    for spec in plan():
        image = simulate.template_space_image(truth, spec, individual=False)
        loss = 1.0 - float(image[region].mean()) / reference
        assert loss == pytest.approx(spec.intensity_loss, abs=1e-4), spec
        means.setdefault(spec.diagnosis, []).append(float(image[region].mean()))
    ad_losses = [s.intensity_loss for s in plan() if s.diagnosis == "AD"]
    difference = (np.mean(means["CN"]) - np.mean(means["AD"])) / reference
    assert difference == pytest.approx(np.mean(ad_losses), abs=1e-4)
    assert np.mean(means["CN"]) == pytest.approx(reference, rel=1e-5)
    mci = next(s for s in plan() if s.diagnosis == "MCI")
    assert 0.25 * EFFECT <= mci.intensity_loss <= 0.75 * EFFECT


def test_expected_ad_loss_is_the_effect_size():
    """E[L | AD] = e over a large plan (severities drawn from U(0.5, 1.5))."""
    specs = simulate.plan_cohort(400, seed=1, effect_size=EFFECT)
    ad = np.array([s.intensity_loss for s in specs if s.diagnosis == "AD"])
    assert len(ad) == 200 and ad.mean() == pytest.approx(EFFECT, abs=0.015)
    assert ad.min() >= 0.5 * EFFECT and ad.max() <= 1.5 * EFFECT
    assert all(s.intensity_loss == 0 for s in specs if s.diagnosis == "CN")


def test_loss_is_measurable_on_the_native_scans(cohort, truth):
    """Through the truth masks, after warp, pose, bias and noise: AD minus CN is close to the planted loss."""
    brain = truth.template.mask_array()
    template_ratio = truth.intensity[truth.region].mean() / truth.intensity[brain & ~truth.region].mean()
    measured = {}
    for spec in plan():
        scan = native(cohort, spec).astype(np.float64)
        region = native(cohort, spec, desc="atrophy") > 0
        hippocampus = native(cohort, spec, desc="hippocampus") > 0
        assert region.shape == scan.shape and 0 < hippocampus.sum() < region.sum()
        assert not (hippocampus & ~region).any()  # the default regions include the hippocampus
        rest = (scan > 0.1 * np.percentile(scan, 99)) & ~region
        measured.setdefault(spec.diagnosis, []).append(1 - scan[region].mean() / scan[rest].mean() / template_ratio)
    planted = np.mean([s.intensity_loss for s in plan() if s.diagnosis == "AD"])
    difference = np.mean(measured["AD"]) - np.mean(measured["CN"])
    assert difference == pytest.approx(planted, abs=0.1)
    assert min(measured["AD"]) > max(measured["CN"])


def test_sessions_share_anatomy_but_not_pose(cohort):
    spec = plan()[0]
    first = nib.load(cohort / f"sub-{spec.label}" / "ses-01" / "anat" / f"sub-{spec.label}_ses-01_T1w.nii.gz")
    second = nib.load(cohort / f"sub-{spec.label}" / "ses-02" / "anat" / f"sub-{spec.label}_ses-02_T1w.nii.gz")
    assert not np.allclose(first.affine, second.affine)
    sidecars = [json.loads((cohort / "derivatives" / "simulation" / f"sub-{spec.label}" / f"ses-{s}" / "anat"
                            / f"sub-{spec.label}_ses-{s}_desc-atrophy_mask.json").read_text()) for s in ("01", "02")]
    assert sidecars[0]["ShiftMM"] == sidecars[1]["ShiftMM"]
    assert sidecars[0]["IntensityGain"] == sidecars[1]["IntensityGain"]


def test_same_seed_gives_identical_files_whatever_nprocs(cohort, tmp_path):
    again = simulate.simulate_cohort(tmp_path / "again", n_subjects=N_SUBJECTS, resolution=RESOLUTION, seed=SEED,
                                     effect_size=EFFECT, sessions=SESSIONS, n_mci=N_MCI, nprocs=2)
    assert tree_digest(again) == tree_digest(cohort)


def test_null_cohort_carries_no_atrophy_and_keeps_everything_else(cohort, truth, tmp_path):
    """Made null, a cohort keeps its diagnoses and every CN scan; nobody loses intensity."""
    null = simulate.simulate_cohort(tmp_path / "null", n_subjects=N_SUBJECTS, resolution=RESOLUTION, seed=SEED,
                                    effect_size=EFFECT, sessions=SESSIONS, n_mci=N_MCI, null=True)
    specs = simulate.plan_cohort(N_SUBJECTS, seed=SEED, effect_size=EFFECT, n_mci=N_MCI, sessions=SESSIONS,
                                 null=True)
    assert [s.diagnosis for s in specs] == [s.diagnosis for s in plan()]
    assert all(s.severity == 0 for s in specs)
    for spec in specs:
        image = simulate.template_space_image(truth, spec, individual=False)
        assert np.array_equal(image[truth.region], truth.intensity[truth.region])
        relative = f"sub-{spec.label}/ses-01/anat/sub-{spec.label}_ses-01_T1w.nii.gz"
        same = (null / relative).read_bytes() == (cohort / relative).read_bytes()
        assert same == (spec.diagnosis == "CN"), spec
    truth_dir = null / "derivatives" / "simulation"
    probseg = json.loads(next(truth_dir.glob("*_desc-atrophy_probseg.json")).read_text())
    assert probseg["Null"] is True and probseg["CarriedBy"] == []
    assert pd.read_csv(truth_dir / "participants.tsv", sep="\t")["intensity_loss"].eq(0).all()


def test_command_line_writes_a_cohort(tmp_path, capsys):
    code = simulate.main([str(tmp_path / "cli"), "--n-subjects", "2", "--resolution", "8", "--seed", "3",
                          "--effect-size", "0.2", "--regions", "Hippocampus"])
    assert code == 0 and capsys.readouterr().out.strip() == str(tmp_path / "cli")
    table = pd.read_csv(tmp_path / "cli" / "participants.tsv", sep="\t")
    assert sorted(table["diagnosis"]) == ["AD", "CN"]
    description = json.loads((tmp_path / "cli" / "derivatives" / "simulation" / "dataset_description.json")
                             .read_text())
    assert description["Simulation"]["regions"] == ["Hippocampus"]
    assert description["Simulation"]["effect_size"] == 0.2 and description["Simulation"]["res_label"] == "8"


@pytest.mark.parametrize(("args", "message"), [
    (["--n-subjects", "1"], "--n-subjects 1"),
    (["--effect-size", "0.9"], "--effect-size 0.9"),
    (["--resolution", "0.1"], "--resolution 0.1"),
    (["--sessions", "0"], "--sessions"),
    (["--n-mci", "-1"], "--n-mci"),
    (["--regions", "Nowhere"], "--regions Nowhere"),
    (["--n-subjects", "many"], "--n-subjects"),
    (["--no-such-option"], "--no-such-option"),
])
def test_bad_arguments_exit_2_with_one_line(tmp_path, capsys, args, message):
    out = tmp_path / "out"
    code = simulate.main([str(out), "--resolution", "8", *args])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith("adheat-simulate: error:") and message in lines[0]
    assert not out.exists()


def test_a_non_empty_output_folder_is_refused(tmp_path, capsys):
    (tmp_path / "keep.txt").write_text("mine")
    assert simulate.main([str(tmp_path), "--resolution", "8"]) == 2
    assert "is not an empty folder" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]
