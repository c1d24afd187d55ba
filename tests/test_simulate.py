"""The simulator (``adheat-simulate``): valid BIDS, measurable planted atrophy, reproducibility, options, errors.

Every cohort here is on the 4 mm grid with a handful of subjects, built from the
real 2009c template where ``../shared/data`` is present (the offline fallback
template otherwise). One module-scoped tissue-loss cohort with two sessions and
an MCI subject serves most tests, with its ``null`` twin (same subjects, no
atrophy) as the paired control of the volume tests; the reproducibility,
``nprocs``, darkening and site tests each simulate one more small cohort or
single scans.
"""

from __future__ import annotations

import dataclasses
import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from adheat_app import simulate
from adheat_app.simulate import cli
from adheat_app.bids import run_bids_validator, validator_command
from conftest import tree_digest

RESOLUTION = 4.0
N_SUBJECTS = 6
N_MCI = 1
SESSIONS = 2
SEED = 7
EFFECT = 0.3
#: The module's cohorts are made from the registration target (fast, and the volume tests' calibration); the
#: other parents have tests of their own below.
ANATOMY = ("template",)


def plan(**options) -> list[simulate.SubjectSpec]:
    """The plan of the module's cohort."""
    return simulate.plan_cohort(N_SUBJECTS, seed=SEED, effect_size=EFFECT, n_mci=N_MCI, sessions=SESSIONS,
                                anatomy=ANATOMY,
                                **options)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """6 AD/CN subjects and 1 MCI, 2 sessions each, with twins, simulated serially."""
    root = tmp_path_factory.mktemp("sim") / "bids"
    out = simulate.simulate_cohort(root, n_subjects=N_SUBJECTS, resolution=RESOLUTION, seed=SEED,
                                   effect_size=EFFECT, sessions=SESSIONS, n_mci=N_MCI, nprocs=1, anatomy=ANATOMY,
                                   twins=True)
    return out


@pytest.fixture(scope="module")
def null_twin(tmp_path_factory):
    """The module's cohort made null: the same subjects, scans and poses, nobody carries atrophy."""
    root = tmp_path_factory.mktemp("null") / "bids"
    return simulate.simulate_cohort(root, n_subjects=N_SUBJECTS, resolution=RESOLUTION, seed=SEED,
                                    effect_size=EFFECT, sessions=SESSIONS, n_mci=N_MCI, null=True, anatomy=ANATOMY)


@pytest.fixture(scope="module")
def truth(cohort):
    return simulate.build_ground_truth(RESOLUTION)


def native(cohort, spec, session="01", desc=None, suffix="mask") -> np.ndarray:
    """A scan (or, with ``desc``, its truth mask or tissue map) as an array."""
    name = f"sub-{spec.label}_ses-{session}"
    if desc is None:
        path = cohort / f"sub-{spec.label}" / f"ses-{session}" / "anat" / f"{name}_T1w.nii.gz"
    else:
        path = (cohort / "derivatives" / "simulation" / f"sub-{spec.label}" / f"ses-{session}" / "anat"
                / f"{name}_desc-{desc}_{suffix}.nii.gz")
    return np.asarray(nib.load(path).dataobj)


def planted(cohort) -> dict[str, float]:
    """Each subject's planted loss (the truth table's ``planted_loss``) by label."""
    table = pd.read_csv(cohort / "derivatives" / "simulation" / "participants.tsv", sep="\t")
    return {pid.removeprefix("sub-"): loss for pid, loss in zip(table["participant_id"], table["planted_loss"])}


def voxel_ml(cohort, spec, session="01") -> float:
    """Voxel volume (ml) of a native scan."""
    path = cohort / f"sub-{spec.label}" / f"ses-{session}" / "anat" / f"sub-{spec.label}_ses-{session}_T1w.nii.gz"
    return float(np.prod(nib.load(path).header.get_zooms()[:3])) / 1000


def test_pybids_finds_every_t1w_and_the_tables_match_the_plan(cohort):
    from bids import BIDSLayout

    layout = BIDSLayout(cohort, validate=False)
    specs = plan()
    assert layout.get_subjects() == [s.label for s in specs]
    assert layout.get_sessions() == ["01", "02"]
    files = layout.get(suffix="T1w", extension=".nii.gz", return_type="filename")
    assert len(files) == len(specs) * SESSIONS
    table = pd.read_csv(cohort / "participants.tsv", sep="\t", dtype={"participant_id": str})
    assert list(table.columns) == ["participant_id", "diagnosis", "age", "sex", "site", "anatomy"]
    assert table["anatomy"].eq("template").all()
    assert list(table["participant_id"]) == [s.participant_id for s in specs]
    assert table["diagnosis"].value_counts().to_dict() == {"AD": 3, "CN": 3, "MCI": 1}
    assert list(table["age"]) == [s.age for s in specs] and table["age"].between(55, 95).all()
    assert set(table["sex"]) <= {"F", "M"} and table["site"].eq(0).all()
    loss = pd.read_csv(cohort / "derivatives" / "simulation" / "participants.tsv", sep="\t")
    assert ((loss["planted_loss"] > 0) == [s.carrier for s in specs]).all()
    assert list(loss["subtype"].fillna("n/a")) == [s.subtype if s.carrier else "n/a" for s in specs]
    # tissue-loss: the volume removed from the region is the planted loss, to the calibration's precision
    assert np.allclose(loss["volume_loss"], loss["planted_loss"], atol=1e-5)
    region_ml = json.loads(next((cohort / "derivatives" / "simulation").glob("*_probseg.json")).read_text())[
        "RegionVolumeML"]
    assert np.allclose(loss["volume_loss_ml"], loss["volume_loss"] * region_ml, atol=1e-3)
    description = json.loads((cohort / "dataset_description.json").read_text())
    assert description["DatasetType"] == "raw" and description["GeneratedBy"][0]["Name"] == "adheat-simulate"


def test_official_validator_passes(cohort):
    if validator_command() is None:
        pytest.skip("bids-validator-deno is not installed (pip install bids-validator-deno)")
    run_bids_validator(cohort)  # raises InputError listing the errors otherwise


def test_planted_volume_loss_is_real_on_the_native_scans(cohort, null_twin):
    """Each carrier's region, counted in its native truth masks, is smaller than in its atrophy-free twin by
    the planted fraction (4 mm voxels, after anatomy, age, pose and a new grid: within 0.035); controls are
    byte-identical in both cohorts."""
    errors, losses = [], planted(cohort)
    for spec in plan():
        for session in ("01", "02"):
            volume = native(cohort, spec, session, desc="atrophy").sum() * voxel_ml(cohort, spec, session)
            twin = native(null_twin, spec, session, desc="atrophy").sum() * voxel_ml(null_twin, spec, session)
            if spec.diagnosis == "CN":
                assert volume == twin
                continue
            errors.append(volume / twin - (1 - losses[spec.label]))
    # measured: errors -0.018..0.020, mean 0.002
    assert np.abs(errors).max() < 0.035 and abs(np.mean(errors)) < 0.015, errors


def test_grey_matter_keeps_its_intensity_while_losing_volume(cohort, null_twin):
    """Tissue-loss is morphometric: the mean and SD of the scan inside native grey matter stay within 1 % / 5 %
    of the twin's, while the grey-matter volume falls by part of the region's loss."""
    losses = planted(cohort)
    for spec in plan():
        if spec.diagnosis == "CN":
            continue
        scans = [native(c, spec).astype(np.float64) for c in (cohort, null_twin)]
        grey = [native(c, spec, desc="tissue", suffix="dseg") == 2 for c in (cohort, null_twin)]
        means = [scan[g].mean() for scan, g in zip(scans, grey)]
        sds = [scan[g].std() for scan, g in zip(scans, grey)]
        # measured (seed 7): means within 0.3 %, SDs within 3.9 % (the cortex loses volume too)
        assert means[0] == pytest.approx(means[1], rel=0.01) and sds[0] == pytest.approx(sds[1], rel=0.05), spec
        lost_ml = (grey[1].sum() - grey[0].sum()) * voxel_ml(cohort, spec)
        assert lost_ml > 0.05 * losses[spec.label] * 87, (spec, lost_ml)


def test_log_jacobian_is_the_planted_change(cohort, truth):
    """The written template-space log-Jacobian integrates to the planted volume loss in the region, is near 0
    in the brain farther than 40 mm from it (measured: at most 0.006) and 0 for controls."""
    from scipy import ndimage

    far = (ndimage.distance_transform_edt(~truth.region, sampling=RESOLUTION) > 40) & (truth.envelope > 0)
    table = pd.read_csv(cohort / "derivatives" / "simulation" / "participants.tsv", sep="\t")
    for spec, loss in zip(plan(), table["volume_loss"]):
        path = simulate.log_jacobian_path(cohort / "derivatives" / "simulation", truth, spec.label)
        img = nib.load(path)
        assert np.allclose(img.affine, truth.template.affine) and img.shape == truth.template.shape
        log_jacobian = np.asarray(img.dataobj)
        assert np.exp(log_jacobian[truth.region]).mean() == pytest.approx(1 - loss, abs=1e-5)
        assert np.abs(log_jacobian[far]).max() < 0.01
        if spec.diagnosis == "CN":
            assert not log_jacobian.any()
        else:
            assert log_jacobian[truth.region].mean() < np.log(1 - 0.9 * loss)


def test_darkening_model_plants_the_intensity_loss(truth):
    """Darkening: L_s = 1 - mean_R(T_s) / mean_R(T) equals severity x e; AD minus CN differs by the AD mean loss."""
    specs = plan(atrophy_model="darkening")  # one uniform loss: severity x effect size
    region = truth.region
    reference = float(truth.intensity[region].mean())
    means = {}
    for spec in specs:
        image = simulate.template_space_image(truth, spec, individual=False)
        loss = 1.0 - float(image[region].mean()) / reference
        assert loss == pytest.approx(spec.scale, abs=1e-4), spec
        means.setdefault(spec.diagnosis, []).append(float(image[region].mean()))
    ad_losses = [s.scale for s in specs if s.diagnosis == "AD"]
    difference = (np.mean(means["CN"]) - np.mean(means["AD"])) / reference
    assert difference == pytest.approx(np.mean(ad_losses), abs=1e-4)
    assert np.mean(means["CN"]) == pytest.approx(reference, rel=1e-5)
    mci = next(s for s in specs if s.diagnosis == "MCI")
    assert 0.25 * EFFECT <= mci.scale <= 0.75 * EFFECT


def test_darkening_loss_is_measurable_on_the_native_scans(tmp_path, truth):
    """Darkening, through the truth masks, after warp, pose, bias and noise: AD minus CN is close to the planted
    loss."""
    cohort = simulate.simulate_cohort(tmp_path / "dark", n_subjects=N_SUBJECTS, resolution=RESOLUTION, seed=SEED,
                                      effect_size=EFFECT, atrophy_model="darkening", anatomy=ANATOMY)
    brain = truth.template.mask_array()
    template_ratio = truth.intensity[truth.region].mean() / truth.intensity[brain & ~truth.region].mean()
    measured = {}
    specs = simulate.plan_cohort(N_SUBJECTS, seed=SEED, effect_size=EFFECT, atrophy_model="darkening",
                                 anatomy=ANATOMY)
    for spec in specs:
        name = f"sub-{spec.label}"
        scan = np.asarray(nib.load(cohort / name / "anat" / f"{name}_T1w.nii.gz").dataobj).astype(np.float64)
        masks = cohort / "derivatives" / "simulation" / name / "anat"
        region = np.asarray(nib.load(masks / f"{name}_desc-atrophy_mask.nii.gz").dataobj) > 0
        hippocampus = np.asarray(nib.load(masks / f"{name}_desc-hippocampus_mask.nii.gz").dataobj) > 0
        assert region.shape == scan.shape and 0 < hippocampus.sum() < region.sum()
        assert not (hippocampus & ~region).any()  # the default regions include the hippocampus
        rest = (scan > 0.1 * np.percentile(scan, 99)) & ~region
        measured.setdefault(spec.diagnosis, []).append(1 - scan[region].mean() / scan[rest].mean() / template_ratio)
    expected = np.mean([s.scale for s in specs if s.diagnosis == "AD"])
    difference = np.mean(measured["AD"]) - np.mean(measured["CN"])
    assert difference == pytest.approx(expected, abs=0.1)
    assert min(measured["AD"]) > max(measured["CN"])
    table = pd.read_csv(cohort / "derivatives" / "simulation" / "participants.tsv", sep="\t")
    carriers = table["planted_loss"] > 0
    # its inward warp removes some volume too (measured: about half the planted intensity loss)
    assert (table["volume_loss"][carriers] > 0).all()
    assert (table["volume_loss"] < table["planted_loss"])[carriers].all()
    assert table["volume_loss"][~carriers].eq(0).all()


def test_subtypes_and_region_rates_follow_their_sources():
    """Over 4000 AD plans (no images): subtypes in Ferreira et al. 2020's proportions (normalised; within 3 SE),
    asymmetry SD 0.1, and each group's loss of a typical, symmetric patient at its published rate relative to the
    hippocampus (the effect size)."""
    from adheat_app.simulate import regions

    specs = [s for s in simulate.plan_cohort(8000, seed=1, effect_size=EFFECT) if s.diagnosis == "AD"]
    shares = np.array([v[0] for v in regions.SUBTYPES.values()])
    shares = shares / shares.sum()
    for name, share in zip(regions.SUBTYPES, shares):
        observed = np.mean([s.subtype == name for s in specs])
        assert observed == pytest.approx(share, abs=3 * np.sqrt(share * (1 - share) / len(specs))), name
    asymmetry = np.array([s.asymmetry for s in specs])
    assert asymmetry.std() == pytest.approx(regions.ASYMMETRY_SD, rel=0.05) and abs(asymmetry.mean()) < 0.01
    names = {1: "Hippocampus_L", 2: "ParaHippocampal_R", 3: "Temporal_Inf_L", 4: "Precuneus_R", 5: "Frontal_Sup_2_L"}
    typical = regions.region_losses(names, EFFECT, "typical", 0.0)
    assert typical[1] == pytest.approx(EFFECT)
    assert typical[2] == pytest.approx(EFFECT * 0.30 / 0.27) and typical[3] == pytest.approx(EFFECT * 0.08 / 0.27)
    assert typical[4] == pytest.approx(EFFECT * 0.06 / 0.27) and typical[5] == pytest.approx(EFFECT * 0.06 / 0.27)
    sparing = regions.region_losses(names, EFFECT, "hippocampal-sparing", 0.2)
    assert sparing[1] < typical[1] and sparing[3] > typical[3] and sparing[1] == pytest.approx(EFFECT * 0.4 * 1.2)
    limbic = regions.region_losses(names, EFFECT, "limbic-predominant", -0.2)
    assert limbic[2] > typical[2] and limbic[4] < typical[4]
    # the mean hippocampal loss over AD subjects: the effect size times the subtype-weighted limbic factor
    factor = sum(share * v[1] for share, v in zip(shares, regions.SUBTYPES.values()))
    hippocampus = [regions.region_losses({1: "Hippocampus_L"}, s.scale, s.subtype, s.asymmetry)[1] for s in specs]
    assert np.mean(hippocampus) == pytest.approx(EFFECT * factor, rel=0.03)
    assert all(not s.carrier for s in simulate.plan_cohort(400, seed=1) if s.diagnosis == "CN")


def test_demographics_follow_the_documented_distributions():
    """AD 75 +- 8, CN 73 +- 6 years; head size 0.98 (F) / 1.02 (M), SD 0.03 (800 subjects: within 3 SE)."""
    specs = simulate.plan_cohort(800, seed=2)
    for group, (mean, sd) in simulate.AGE_DISTRIBUTION.items():
        ages = np.array([s.age for s in specs if s.diagnosis == group])
        if len(ages):
            assert ages.mean() == pytest.approx(mean, abs=3 * sd / np.sqrt(len(ages)))
            assert ages.std() == pytest.approx(sd, rel=0.15)
    for sex, mean in simulate.HEAD_SCALE.items():
        scales = np.array([s.head_scale for s in specs if s.sex == sex])
        assert scales.mean() == pytest.approx(mean, abs=3 * 0.03 / np.sqrt(len(scales)))
    assert 300 < sum(s.sex == "F" for s in specs) < 500


@pytest.mark.parametrize(("n", "sites", "imbalance"), [(20, 2, 1.0), (20, 3, 0.8), (21, 4, None), (9, 2, 0.0)])
def test_site_imbalance_assigns_exact_counts(n, sites, imbalance):
    """round(F x n_AD) AD at site 0, round((1 - F) / (sites - 1) x n_CN) CN at site 0, the rest spread evenly."""
    specs = simulate.plan_cohort(n, seed=5, sites=sites, site_imbalance=imbalance, n_mci=3)
    share = 1 / sites if imbalance is None else imbalance
    for group, group_share in (("AD", share), ("CN", (1 - share) / (sites - 1)), ("MCI", 1 / sites)):
        members = [s.site.index for s in specs if s.diagnosis == group]
        at_reference = int(np.floor(group_share * len(members) + 0.5))
        assert members.count(0) == at_reference, (group, members)
        counts = [members.count(k) for k in range(1, sites)]
        assert max(counts) - min(counts) <= 1
    assert all(s.site == simulate.draw_sites(5, sites)[s.site.index] for s in specs)


def test_site_only_cohort_carries_the_label_by_site_alone(tmp_path):
    """--sites 2 --site-imbalance 1.0 --null: every AD at site 0, every CN at site 1, nobody atrophied."""
    out = simulate.simulate_cohort(tmp_path / "sites", n_subjects=4, resolution=8.0, seed=4, null=True, sites=2,
                                   site_imbalance=1.0, anatomy=ANATOMY)
    table = pd.read_csv(out / "participants.tsv", sep="\t")
    assert (table["site"] == (table["diagnosis"] == "CN").astype(int)).all()
    truth_table = pd.read_csv(out / "derivatives" / "simulation" / "participants.tsv", sep="\t")
    assert truth_table["planted_loss"].eq(0).all() and truth_table["volume_loss"].eq(0).all()
    sites = pd.read_csv(out / "derivatives" / "simulation" / "sites.tsv", sep="\t")
    assert sites["site"].tolist() == [0, 1] and sites["n_AD"].tolist() == [2, 0] and sites["n_CN"].tolist() == [0, 2]


def test_sites_differ_in_voxel_size_contrast_and_noise(truth):
    """One subject scanned at the reference site and at another (same seed, so the same per-scan draws):
    voxel size, grey/white contrast and noise change by the site's factors."""
    sites = simulate.draw_sites(seed=11, n_sites=3)
    assert sites[0] == simulate.REFERENCE_SITE
    other = sites[1]
    assert abs(other.voxel_scale - 1) >= 0.1 and abs(other.contrast - 1) >= 0.1
    assert abs(np.log(other.noise / sites[0].noise)) >= 0.3
    spec = plan()[1]
    anatomy = simulate.subject_anatomy(truth, spec)
    measured = []
    for site in (sites[0], other):
        scan = simulate.simulate_scan(truth, dataclasses.replace(spec, site=site), anatomy, 0)
        data = np.asarray(scan.t1w.dataobj).astype(np.float64)
        tissue = np.asarray(scan.tissue.dataobj)
        background = field_of_view_shell(data.shape)
        white, grey = np.median(data[tissue == 3]), np.median(data[tissue == 2])
        measured.append({"zooms": np.array(scan.t1w.header.get_zooms()[:3]), "contrast": (white - grey) / white,
                         "noise": data[background].mean() / np.sqrt(np.pi / 2) / white})
    assert np.allclose(measured[1]["zooms"] / measured[0]["zooms"], other.voxel_scale, rtol=1e-5)
    assert measured[1]["contrast"] / measured[0]["contrast"] == pytest.approx(other.contrast, rel=0.1)
    assert measured[1]["noise"] / measured[0]["noise"] == pytest.approx(other.noise / sites[0].noise, rel=0.15)


def field_of_view_shell(shape: tuple[int, ...]) -> np.ndarray:
    """Voxels of the outer 3-voxel shell of the field of view (only Rician noise there)."""
    shell = np.ones(shape, bool)
    shell[3:-3, 3:-3, 3:-3] = False
    return shell


def test_sessions_share_anatomy_but_not_pose(cohort):
    spec = plan()[0]
    first = nib.load(cohort / f"sub-{spec.label}" / "ses-01" / "anat" / f"sub-{spec.label}_ses-01_T1w.nii.gz")
    second = nib.load(cohort / f"sub-{spec.label}" / "ses-02" / "anat" / f"sub-{spec.label}_ses-02_T1w.nii.gz")
    assert not np.allclose(first.affine, second.affine)
    sidecars = [json.loads((cohort / "derivatives" / "simulation" / f"sub-{spec.label}" / f"ses-{s}" / "anat"
                            / f"sub-{spec.label}_ses-{s}_desc-atrophy_mask.json").read_text()) for s in ("01", "02")]
    assert sidecars[0]["VolumeLoss"] == sidecars[1]["VolumeLoss"]


def test_same_seed_gives_identical_files_whatever_nprocs(cohort, tmp_path):
    again = simulate.simulate_cohort(tmp_path / "again", n_subjects=N_SUBJECTS, resolution=RESOLUTION, seed=SEED,
                                     effect_size=EFFECT, sessions=SESSIONS, n_mci=N_MCI, nprocs=2, anatomy=ANATOMY,
                                     twins=True)
    assert tree_digest(again) == tree_digest(cohort)


def test_null_cohort_carries_no_atrophy_and_keeps_everything_else(cohort, null_twin, truth):
    """Made null, a cohort keeps its diagnoses, demographics and every CN scan; nobody loses anything."""
    specs = plan(null=True)
    assert [(s.diagnosis, s.age, s.sex) for s in specs] == [(s.diagnosis, s.age, s.sex) for s in plan()]
    assert all(s.severity == 0 for s in specs)
    for spec in specs:
        image = simulate.template_space_image(truth, spec, individual=False)
        np.testing.assert_allclose(image[truth.region], truth.intensity[truth.region], rtol=0, atol=1e-6)
        relative = f"sub-{spec.label}/ses-01/anat/sub-{spec.label}_ses-01_T1w.nii.gz"
        same = (null_twin / relative).read_bytes() == (cohort / relative).read_bytes()
        assert same == (spec.diagnosis == "CN"), spec
    truth_dir = null_twin / "derivatives" / "simulation"
    probseg = json.loads(next(truth_dir.glob("*_desc-atrophy_probseg.json")).read_text())
    assert probseg["Null"] is True and probseg["CarriedBy"] == []
    assert pd.read_csv(truth_dir / "participants.tsv", sep="\t")["volume_loss"].eq(0).all()


def test_command_line_writes_a_cohort(tmp_path, capsys):
    code = cli.main([str(tmp_path / "cli"), "--n-subjects", "2", "--resolution", "8", "--seed", "3",
                          "--effect-size", "0.2", "--regions", "Hippocampus", "--atrophy-model", "darkening",
                          "--sites", "2", "--site-imbalance", "1"])
    assert code == 0 and capsys.readouterr().out.strip() == str(tmp_path / "cli")
    table = pd.read_csv(tmp_path / "cli" / "participants.tsv", sep="\t")
    assert sorted(table["diagnosis"]) == ["AD", "CN"]
    description = json.loads((tmp_path / "cli" / "derivatives" / "simulation" / "dataset_description.json")
                             .read_text())
    assert description["Simulation"]["regions"] == ["Hippocampus"]
    assert description["Simulation"]["effect_size"] == 0.2 and description["Simulation"]["res_label"] == "8"
    assert description["Simulation"]["atrophy_model"] == "darkening" and description["Simulation"]["sites"] == 2
    assert table.set_index("diagnosis")["site"].to_dict() == {"AD": 0, "CN": 1}


@pytest.mark.parametrize(("args", "message"), [
    (["--n-subjects", "1"], "--n-subjects 1"),
    (["--effect-size", "0.9"], "--effect-size 0.9"),
    (["--effect-size", "0.4"], "--effect-size 0.4"),
    (["--atrophy-model", "shrink"], "--atrophy-model"),
    (["--sites", "0"], "--sites 0"),
    (["--sites", "2", "--site-imbalance", "1.5"], "--site-imbalance 1.5"),
    (["--resolution", "0.1"], "--resolution 0.1"),
    (["--sessions", "0"], "--sessions"),
    (["--n-mci", "-1"], "--n-mci"),
    (["--regions", "Nowhere"], "--regions Nowhere"),
    (["--n-subjects", "many"], "--n-subjects"),
    (["--no-such-option"], "--no-such-option"),
])
def test_bad_arguments_exit_2_with_one_line(tmp_path, capsys, args, message):
    out = tmp_path / "out"
    code = cli.main([str(out), "--resolution", "8", *args])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith("adheat-simulate: error:") and message in lines[0]
    assert not out.exists()


def test_a_non_empty_output_folder_is_refused(tmp_path, capsys):
    (tmp_path / "keep.txt").write_text("mine")
    assert cli.main([str(tmp_path), "--resolution", "8"]) == 2
    assert "is not an empty folder" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_each_ad_subject_has_its_own_truth_overlapping_the_cohort_map(cohort, truth):
    """Per-subject truth (no images for the many, the written maps for the module's cohort): the masks of 40 AD
    subjects' region maps differ (mean pairwise Dice below 0.8) while each overlaps the cohort map (their mean),
    and the written cohort map is the mean of the written subject maps of the AD carriers."""
    from adheat_app.layout import simulation_subject_map, simulation_truth_path
    from adheat_app.simulate.anatomy import region_map
    from adheat_app.simulate.regions import region_losses

    names = {value: truth.names[value] for value in truth.region_values}
    specs = [s for s in simulate.plan_cohort(80, seed=3, anatomy=ANATOMY) if s.diagnosis == "AD"]
    maps = np.stack([region_map(truth, region_losses(names, s.scale, s.subtype, s.asymmetry)) for s in specs])
    masks = maps >= 0.5
    cohort_mask = maps.mean(axis=0) >= 0.5
    dice = [2 * (masks[i] & masks[j]).sum() / (masks[i].sum() + masks[j].sum())
            for i in range(len(masks)) for j in range(i + 1, len(masks))]
    assert np.mean(dice) < 0.8, np.mean(dice)
    assert all((mask & cohort_mask).sum() > 0 for mask in masks)
    root = cohort / "derivatives" / "simulation"
    space, res = truth.template.space, truth.template.res_label
    written = {s.label: np.asarray(nib.load(simulation_subject_map(root, s.label, space, res, "probseg")).dataobj)
               for s in plan()}
    cohort_map = np.asarray(nib.load(simulation_truth_path(cohort, space, res)).dataobj)
    ad = [written[s.label] for s in plan() if s.diagnosis == "AD"]
    np.testing.assert_allclose(cohort_map, np.mean(ad, axis=0), atol=1e-6)
    assert all(not written[s.label].any() for s in plan() if s.diagnosis == "CN")


def test_twin_equals_its_scan_far_from_the_truth_and_differs_inside(cohort):
    """--twins: every AD/MCI scan has a twin on its grid under derivatives/simulation, equal (to interpolation
    of the flow's far field) more than 20 mm from the subject's planted region and different
    inside it; controls have none and the raw dataset holds no twin."""
    from scipy import ndimage

    assert not list(cohort.glob("sub-*/**/*twin*"))
    for spec in plan():
        for session in ("01", "02"):
            twin_path = (cohort / "derivatives" / "simulation" / f"sub-{spec.label}" / f"ses-{session}" / "anat"
                         / f"sub-{spec.label}_ses-{session}_desc-twin_T1w.nii.gz")
            if not spec.carrier:
                assert not twin_path.exists()
                continue
            scan_img = nib.load(cohort / f"sub-{spec.label}" / f"ses-{session}" / "anat"
                                / f"sub-{spec.label}_ses-{session}_T1w.nii.gz")
            twin_img = nib.load(twin_path)
            assert np.allclose(twin_img.affine, scan_img.affine) and twin_img.shape == scan_img.shape
            assert json.loads(twin_path.with_name(twin_path.name.replace(".nii.gz", ".json")).read_text())["TwinOf"]
            scan, twin = (np.asarray(i.dataobj).astype(np.float64) for i in (scan_img, twin_img))
            region = native(cohort, spec, session, desc="atrophy") > 0
            zooms = scan_img.header.get_zooms()[:3]
            far = ndimage.distance_transform_edt(~region, sampling=zooms) > 20
            scale = np.percentile(scan, 99)
            far_change = np.abs(scan - twin)[far].mean() / scale
            inside_change = np.abs(scan - twin)[region].mean() / scale
            # measured: far from the region 0.2-1 % of the change inside it
            assert far_change < 0.1 * inside_change and inside_change > 0, (spec, far_change, inside_change)
