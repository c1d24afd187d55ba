"""Evaluation: overlap metrics on toy maps, ALE, reference maps, and the full step on a simulated cohort."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from adheat_app.errors import InputError
from adheat_app.evaluation import run_evaluation
from adheat_app.evaluation.distances import distance_matrix, map_distances
from adheat_app.evaluation.chance import chance_levels
from adheat_app.evaluation.intervals import basic_interval
from adheat_app.evaluation.overlap import bootstrap, overlap_metrics, resample_counts
from adheat_app.evaluation.reference import ale_fwhm, ale_map, builtin_reference_path, load_map
from conftest import make_preprocessed_cohort, shared_data_or_skip

V = 200
REFERENCE = np.arange(V) < 20  # 10 % of the voxels
RANK = np.arange(V, dtype=float) / V  # distinct values: no ties


def test_perfect_overlap():
    relevance = np.where(REFERENCE, 10 + RANK, RANK)
    m = overlap_metrics(relevance, REFERENCE, REFERENCE.astype(float))
    # top 1/5/10/20 %: 2/10/20/40 voxels, all of the first three inside the 20-voxel reference
    assert np.allclose(m["dice"], [2 * 2 / 22, 2 * 10 / 30, 1.0, 2 * 20 / 60])
    assert np.allclose(m["overlap_fraction"], [1, 1, 1, 0.5])
    assert m["roc_auc"] == 1.0 and m["average_precision"] == 1.0
    assert m["mass_inside"] == pytest.approx(relevance[REFERENCE].sum() / relevance.sum())


def test_no_overlap():
    relevance = np.where(REFERENCE, 0.0, 1 + RANK)
    m = overlap_metrics(relevance, REFERENCE, REFERENCE.astype(float))
    assert np.allclose(m["dice"][:3], 0) and np.allclose(m["overlap_fraction"][:3], 0)
    assert m["roc_auc"] == 0.0 and m["mass_inside"] == 0.0
    assert m["average_precision"] == pytest.approx(0.1)  # every voxel ties or outranks the reference


def test_rank_accuracy_of_the_truth_its_complement_and_ties():
    truth = REFERENCE.astype(float)
    assert overlap_metrics(truth, REFERENCE, truth)["rank_accuracy"] == 1.0  # the truth's own top |R| voxels
    assert overlap_metrics(1.0 - truth, REFERENCE, truth)["rank_accuracy"] == 0.0  # its complement
    # 10 of the 20 reference voxels on top; the other 10 top places go to the 190 voxels tied at 1.0 (10 of them
    # in the reference): each fills 10/190 of a place -> 10 + 10 * 10 / 190 reference voxels among the top 20
    tied = np.where(np.arange(V) < 10, 2.0, 1.0)
    m = overlap_metrics(tied, REFERENCE, truth)
    assert m["rank_accuracy"] == pytest.approx((10 + 10 * 10 / 190) / 20)
    assert m["rank_accuracy"] == pytest.approx(m["overlap_fraction"][2])  # top 10 % holds |R| = 20 voxels too


def test_half_overlap():
    inside_top = np.arange(V) < 10
    outside_top = (np.arange(V) >= 100) & (np.arange(V) < 110)
    relevance = np.where(inside_top | outside_top, 10 + RANK, RANK)
    m = overlap_metrics(relevance, REFERENCE, REFERENCE.astype(float))
    assert m["dice"][2] == pytest.approx(0.5) and m["overlap_fraction"][2] == pytest.approx(0.5)


def test_auc_ap_match_sklearn_with_ties_and_random_maps_score_half():
    rng = np.random.default_rng(0)
    relevance = np.round(rng.random(5000), 2)
    reference = rng.random(5000) < 0.1
    m = overlap_metrics(relevance, reference, reference.astype(float))
    assert m["roc_auc"] == pytest.approx(roc_auc_score(reference, relevance), abs=1e-12)
    assert m["average_precision"] == pytest.approx(average_precision_score(reference, relevance), abs=1e-12)
    assert abs(m["roc_auc"] - 0.5) < 0.03
    assert abs(m["spearman"]) < 0.05


def test_bootstrap_is_reproducible_and_degenerate_for_identical_subjects():
    rng = np.random.default_rng(1)
    maps = rng.random((6, V)).astype(np.float32)
    subjects = [f"s{i}" for i in range(6)]
    counts = resample_counts(subjects, 40, seed=3)
    assert counts.shape == (40, 6) and np.all(counts.sum(axis=1) == 6)
    assert np.array_equal(counts, resample_counts(subjects, 40, seed=3))
    first = bootstrap(maps, [REFERENCE], counts)[0]
    assert first["roc_auc"].shape == (40,) and first["dice"].shape == (40, 4)
    resample = counts[7] @ maps / 6  # the mean map of resample 7, scored directly
    assert first["roc_auc"][7] == pytest.approx(overlap_metrics(resample, REFERENCE, RANK)["roc_auc"], abs=1e-6)
    same = bootstrap(np.repeat(maps[:1], 6, axis=0), [REFERENCE], resample_counts(subjects, 20, seed=0))[0]
    value = overlap_metrics(maps[0], REFERENCE, RANK)["mass_inside"]
    estimate, low, high = basic_interval(value, same["mass_inside"])
    assert low == pytest.approx(high) and estimate == pytest.approx(value)


def test_chance_levels_hand_computed():
    levels = chance_levels(0.026, 100_000)  # the share of the built-in prior at 2 mm (K = kV exactly)
    # 2kp/(k+p): k = 0.01 -> 0.00052/0.036
    assert np.allclose(levels["dice"], [0.0144444, 0.0342105, 0.0412698, 0.0460177], atol=1e-6)
    assert np.allclose(levels["overlap_fraction"], 0.026)
    assert levels["average_precision"] == levels["mass_inside"] == levels["rank_accuracy"] == 0.026
    assert levels["roc_auc"] == 0.5 and levels["spearman"] == 0.0
    assert np.allclose(chance_levels(0.1, 1000, (10.0,))["dice"], [0.1])  # k = p: Dice = p
    # the set actually used: 1 % of 150 voxels is 2 voxels (k = 2/150), not 1.5
    assert chance_levels(0.1, 150, (1.0,))["dice"][0] == pytest.approx(2 * (2 / 150) * 0.1 / (2 / 150 + 0.1))


def test_random_map_scores_chance_and_perfect_map_beats_it():
    rng = np.random.default_rng(7)
    n = 200_000
    reference = rng.permutation(n) < n // 20  # exactly 5 %
    levels = chance_levels(reference.mean(), n)
    random = overlap_metrics(rng.random(n), reference, reference.astype(float))
    for metric in ("dice", "overlap_fraction", "average_precision", "mass_inside", "rank_accuracy", "roc_auc"):
        assert np.allclose(random[metric], levels[metric], rtol=0.06, atol=0.004), metric
    assert abs(random["spearman"]) < 0.01
    perfect = overlap_metrics(reference + 0.01 * rng.random(n), reference, reference.astype(float))
    assert perfect["roc_auc"] == 1.0 and perfect["average_precision"] == 1.0
    k = np.array([0.01, 0.05, 0.1, 0.2])
    assert np.allclose(perfect["dice"], 2 * np.minimum(k, 0.05) / (k + 0.05))  # best possible at each k
    assert np.all(perfect["dice"] >= 5 * levels["dice"] - 1e-12)


def test_ale_kernel_width_sum_and_union():
    affine = np.eye(4)
    shape = (41, 41, 41)
    focus = np.array([[20.0, 20.0, 20.0]])
    one = ale_map([(focus, 20)], shape, affine)
    assert one.sum() == pytest.approx(1.0, rel=1e-6)
    profile = one[:, 20, 20] / one.max()
    width = np.sum(profile >= 0.5)  # voxels (1 mm) at or above half maximum
    assert abs(width - ale_fwhm(20)) <= 1.0
    assert ale_fwhm(20) == pytest.approx(9.24, abs=0.05)  # NiMARE/GingerALE kernel for N = 20
    two = ale_map([(focus, 20), (focus, 20)], shape, affine)
    assert two.max() == pytest.approx(1 - (1 - one.max()) ** 2)


def test_builtin_reference_is_documented_and_small():
    path = builtin_reference_path()
    assert path.is_file() and path.stat().st_size < 500_000
    sidecar = json.loads(path.with_name(path.name.replace(".nii.gz", ".json")).read_text())
    assert "NOT computed from published peak coordinates" in sidecar["Description"]
    foci = pd.read_csv(path.with_name(sidecar["Foci"]), sep="\t")
    assert len(foci) == 20 and set(foci["hemisphere"]) == {"L", "R"}
    img = nib.load(path)
    values = np.asarray(img.get_fdata())
    inverse = np.linalg.inv(img.affine)
    for row in foci.itertuples():
        i, j, k = np.rint(inverse[:3, :3] @ [row.x, row.y, row.z] + inverse[:3, 3]).astype(int)
        assert values[i, j, k] > sidecar["Threshold"]


def test_user_reference_map_is_resampled_and_checked(tmp_path):
    from adheat_app.templates import get_template

    template = get_template(4.0)
    data = np.zeros((40, 40, 40), np.float32)
    data[10:30, 10:30, 10:30] = 2.0
    affine = np.diag([4.0, 4.0, 4.0, 1.0])
    affine[:3, 3] = -80
    nib.save(nib.Nifti1Image(data, affine), tmp_path / "ref.nii.gz")
    ref = load_map(tmp_path / "ref.nii.gz", template, "custom", 1.0, "--reference-map")
    assert ref.values.shape == template.shape and ref.binary().sum() > 100
    assert not (ref.binary() & ~template.mask_array()).any()
    with pytest.raises(InputError, match="--reference-map"):
        load_map(tmp_path / "missing.nii.gz", template, "custom", None, "--reference-map")


def test_distances():
    a = np.array([1.0, 0, 0, 1])
    table = map_distances({"A": a, "B": 2 * a, "C": np.array([0, 1.0, 1, 0])})
    row = table.set_index(["method_a", "method_b"])
    assert row.loc[("A", "B"), "euclidean"] == pytest.approx(0) and row.loc[("A", "B"), "correlation_distance"] == \
        pytest.approx(0)
    assert row.loc[("A", "C"), "euclidean"] == pytest.approx(np.sqrt(2))
    assert row.loc[("A", "C"), "correlation_distance"] == pytest.approx(2)
    matrix = distance_matrix(table)
    assert matrix.loc["C", "A"] == matrix.loc["A", "C"] and matrix.loc["B", "B"] == 0


def write_synthetic_heatmaps(derivs, cohort, truth, methods=("IG", "Saliency"), seed=0):
    """Heatmaps = planted truth map + noise (IG signed, Saliency absolute), with attribution-style sidecars."""
    rng = np.random.default_rng(seed)
    mask = truth.template.mask_array()
    for scan in cohort.scans:
        for method in methods:
            signed = method == "IG"
            data = (truth.probseg + rng.normal(0, 0.15, truth.probseg.shape)).astype(np.float32) * mask
            data = data if signed else np.abs(data)
            path = derivs.subject_path(scan.subject, scan.session, "heatmap", space=cohort.space,
                                       res=cohort.res_label, desc=method)
            derivs.write_image(path, nib.Nifti1Image(data, truth.template.affine),
                               {"Method": method, "Signed": signed, "Fold": 0, "TrueLabel": scan.target,
                                "PredictedProbability": 0.5})


def write_synthetic_predictions(derivs, cohort, model):
    """CNN predictions: every scan right except the first AD scan."""
    rows = []
    first_ad = next(s for s in cohort.labelled if s.target == 1)
    for s in cohort.labelled:
        predicted = s.target if s is not first_ad else 1 - s.target
        rows.append({"model": model, "fold": "0", "subject": s.subject, "session": s.session,
                     "diagnosis": s.diagnosis, "target": s.target, "probability": 0.8 if predicted else 0.2,
                     "predicted": predicted})
    (derivs.root / "group").mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(derivs.root / "group" / "predictions.tsv", sep="\t", index=False)
    pd.DataFrame([{"model": model, "fold": "pooled", "roc_auc": 0.9, "better_than_chance": True}]).to_csv(
        derivs.root / "group" / "cv_metrics.tsv", sep="\t", index=False)


def write_log_jacobians(derivs, cohort, truth, seed=0):
    """Log-Jacobian maps beside the scans: a smooth pattern shared by every scan (how the template differs from
    this population, SD 0.3), volume loss in the planted region of AD scans and noise: the cohort then has two
    input channels (--input auto: both)."""
    import dataclasses

    from scipy.ndimage import gaussian_filter

    from adheat_app.layout import logjacobian_path

    rng = np.random.default_rng(seed)
    mask = truth.template.mask_array()
    shared = gaussian_filter(rng.standard_normal(truth.probseg.shape), 2.0)
    shared *= 0.3 / shared[mask].std()
    scans = []
    for scan in cohort.scans:
        data = (shared - 0.15 * truth.probseg * (scan.target == 1)
                + rng.normal(0, 0.02, truth.probseg.shape)) * mask
        path = logjacobian_path(derivs.root, scan, cohort.space, cohort.res_label)
        derivs.write_image(path, nib.Nifti1Image(data.astype(np.float32), truth.template.affine),
                           {"Description": "synthetic log Jacobian"})
        scans.append(dataclasses.replace(scan, logjacobian=path))
    return dataclasses.replace(cohort, scans=tuple(scans), channels=("intensity", "logjacobian"))


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """Twelve subjects, two input channels, synthetic IG and Saliency maps (truth + noise), no trained folds."""
    root = tmp_path_factory.mktemp("evaluation")
    config, derivs, cohort, truth = make_preprocessed_cohort(root, n_subjects=12, resolution=4.0, seed=1,
                                                             evaluation__n_bootstrap=300,  # Holm over 6 rows
                                                             evaluation__n_permutations=100,
                                                             evaluation__n_surrogates=50)
    cohort = write_log_jacobians(derivs, cohort, truth)
    write_synthetic_heatmaps(derivs, cohort, truth)
    write_synthetic_predictions(derivs, cohort, config.training.model)
    run_evaluation(config, derivs, cohort, truth.template)
    return config, derivs, cohort, truth


def test_planted_region_ranks_first(evaluated):
    _, derivs, _, truth = evaluated
    regions = pd.read_csv(derivs.root / "group" / "regions.tsv", sep="\t")
    assert set(regions["method"]) == {"IG", "Saliency"} and set(regions["label"]) == {"AD", "CN", "all"}
    first = regions[regions["rank"] == 1]
    assert set(first["region"]) <= set(truth.region_names)
    block = regions[(regions["method"] == "IG") & (regions["label"] == "all")]
    assert block[block["region"].isin(truth.region_names)]["enrichment"].min() > 2


def test_group_maps_and_overlap(evaluated):
    _, derivs, cohort, truth = evaluated
    group = derivs.root / "group"
    grid = f"space-{cohort.space}_res-{cohort.res_label}"
    for label in ("AD", "CN", "all", "ADcorrect", "ADincorrect", "CNcorrect"):
        path = group / "Saliency" / f"{grid}_label-{label}_desc-Saliency_stat-mean_heatmap.nii.gz"
        assert path.is_file(), label
        mean = np.asarray(nib.load(path).dataobj)
        assert mean.sum() == pytest.approx(1.0, rel=1e-3)
    assert not list(group.glob("*_heatmap.nii.gz"))  # one folder per method, nothing side by side
    assert not (group / "Saliency" / f"{grid}_label-CNincorrect_desc-Saliency_stat-mean_heatmap.nii.gz").exists()
    assert (group / "IG" / f"{grid}_label-AD_desc-IG_stat-signedmean_heatmap.nii.gz").is_file()
    assert not (group / "Saliency" / f"{grid}_label-AD_desc-Saliency_stat-signedmean_heatmap.nii.gz").exists()
    sidecar = json.loads((group / "IG" / f"{grid}_label-ADincorrect_desc-IG_stat-mean_heatmap.json").read_text())
    assert sidecar["N"] == 1 and len(sidecar["Sources"]) == 1
    overlap = pd.read_csv(group / "overlap.tsv", sep="\t")
    from adheat_app.evaluation.cohort_reference import cohort_paths, min_voxels

    mask = truth.template.mask_array()
    scored = set()
    for channel in ("intensity", "logjacobian"):  # one cohort reference per input channel
        paths = cohort_paths(derivs, cohort, channel)
        assert paths["t"].name == f"{grid}_desc-ADvsCN{channel}_stat-t_statmap.nii.gz" and paths["t"].is_file()
        significant = int((np.asarray(nib.load(paths["mask"]).dataobj) > 0).sum())
        scored |= {f"cohort{channel}"} if significant >= min_voxels(int(mask.sum())) else set()
    assert "cohortlogjacobian" in scored  # the planted volume loss
    assert set(overlap["reference"]) == {"anatomicalprior", "simulation"} | scored
    references = json.loads((group / "overlap.json").read_text())["References"]
    cohort_ref = next(r for r in references if r["Name"] == "cohortlogjacobian")
    assert "same subjects" in cohort_ref["Description"] and "log Jacobian" in cohort_ref["Description"]
    assert "builtin" not in (group / "overlap.json").read_text()
    auc = overlap[(overlap["metric"] == "roc_auc") & (overlap["reference"] == "simulation")
                  & (overlap["label"] == "all") & (overlap["kind"] == "method")
                  & (overlap["sign"] == "absolute")].set_index("method")
    assert set(auc.index) == {"IG", "Saliency"}
    assert (auc["value"] > 0.95).all() and (auc["chance"] == 0.5).all()
    assert (auc["ci_low"] < auc["ci_high"]).all() and (auc["ci_high"] <= 1).all()
    assert (group / "figures" / "desc-IG_overlap.png").stat().st_size > 5000
    distances = pd.read_csv(group / "distances.tsv", sep="\t")
    assert len(distances) == 3 and (distances["euclidean"] < 0.5).all()


def test_chance_column_controls_and_signs(evaluated):
    _, derivs, _, truth = evaluated
    overlap = pd.read_csv(derivs.root / "group" / "overlap.tsv", sep="\t")
    mask = truth.template.mask_array()
    share = float((truth.probseg[mask] > 0.5).mean())
    sim = overlap[(overlap["reference"] == "simulation")]
    dice = sim[(sim["metric"] == "dice")].drop_duplicates("top_percent").set_index("top_percent")["chance"]
    k = np.ceil(dice.index.to_numpy() / 100 * mask.sum()) / mask.sum()  # the K voxels actually used
    assert np.allclose(dice.to_numpy(), 2 * k * share / (k + share))
    assert np.allclose(sim[sim["metric"] == "average_precision"]["chance"], share)
    controls = overlap[overlap["kind"] == "control"]
    # per channel and summed; no trained folds, so no fold baseline for BaselineDeviation
    assert set(controls["method"]) == {"InputMagnitude", "InputMagnitudeintensity", "InputMagnitudelogjacobian",
                                       "GreyMatterPrior"}
    assert set(controls["label"]) == {"AD", "CN", "all"}
    assert (controls[controls["metric"] != "spearman"]["n_bootstrap"] == 300).all()  # like methods
    signs = overlap.groupby("method")["sign"].agg(set)
    assert signs["IG"] == {"absolute", "positive"} and signs["Saliency"] == {"absolute"}


def test_paired_differences_match_point_values(evaluated):
    _, derivs, _, _ = evaluated
    group = derivs.root / "group"
    overlap = pd.read_csv(group / "overlap.tsv", sep="\t", na_values=["n/a"])
    differences = pd.read_csv(group / "overlap_differences.tsv", sep="\t", na_values=["n/a"])
    assert {"method_a", "method_b", "reference", "metric", "top_percent", "difference", "ci_low",
            "ci_high"} <= set(differences.columns)
    keys = ["label", "reference", "metric", "top_percent"]
    value = overlap.set_index(["method", "sign", *keys])["map_value"]
    for row in differences.sample(200, random_state=0).itertuples():
        key = (row.label, row.reference, row.metric, row.top_percent)
        assert row.map_difference == pytest.approx(value[(row.method_a, row.sign_a, *key)]
                                               - value[(row.method_b, row.sign_b, *key)], abs=1e-12)
    pairs = differences[(differences["label"] == "all") & (differences["metric"] == "roc_auc")]
    assert len(pairs.drop_duplicates(["method_a", "sign_a", "method_b", "sign_b"])) == 21  # 7 maps, every pair
    assert (pairs["ci_low"] <= pairs["ci_high"]).all() and pairs["ci_low"].notna().all()


def test_answer_table_needs_chance_and_control(evaluated):
    _, derivs, _, _ = evaluated
    answer = pd.read_csv(derivs.root / "group" / "answer.tsv", sep="\t")
    row = answer[(answer["reference"] == "simulation")].set_index(["method", "sign"])
    assert row.loc[("IG", "absolute"), "finds_reference"]  # truth + noise beats chance and every control
    assert row.loc[("IG", "absolute"), "primary"] and not row.loc[("IG", "positive"), "primary"]
    assert set(answer["method"]) == {"IG", "Saliency"}
    assert (answer["above_chance"] == (answer["ci_low"] > answer["chance"])).all()
    assert answer["control"].isin(["InputMagnitude", "BaselineDeviation", "GreyMatterPrior"]).all()
    assert (answer["above_control"] == (answer["vs_control_ci_low"] > 0)).all()
    assert not (answer["finds_reference"] & ~(answer["above_chance"] & answer["above_control"])).any()
    primary = answer[answer["primary"]]
    assert primary["p_holm"].notna().all() and answer[~answer["primary"]]["p_holm"].isna().all()
    assert (primary["p_holm"] >= primary[["p_control", "p_spatial"]].max(axis=1) - 1e-12).all()
    assert np.allclose(answer["effect_over_chance"], answer["value"] - answer["chance"])


def test_every_reported_estimate_lies_inside_its_interval(evaluated):
    _, derivs, _, _ = evaluated
    group = derivs.root / "group"
    for name, value in (("overlap.tsv", "value"), ("overlap_differences.tsv", "difference"),
                        ("answer.tsv", "value"), ("answer.tsv", "vs_control"),
                        ("subject_overlap.tsv", "value"), ("subject_overlap.tsv", "vs_control")):
        table = pd.read_csv(group / name, sep="\t", na_values=["n/a"])
        low, high = ("ci_low", "ci_high") if value in ("value", "difference") else \
            ("vs_control_ci_low", "vs_control_ci_high")
        bounded = table.dropna(subset=[low, high])
        assert len(bounded) > 0, name
        assert ((bounded[low] <= bounded[value] + 1e-12) & (bounded[value] <= bounded[high] + 1e-12)).all(), name


def test_subject_level_scores_of_the_simulated_cohort(evaluated):
    """Each AD subject's own map against its own planted atrophy: methods and controls, chance, the control."""
    from adheat_app.layout import simulation_root, simulation_subject_map

    config, derivs, cohort, _ = evaluated
    group = derivs.root / "group"
    table = pd.read_csv(group / "subject_overlap.tsv", sep="\t", na_values=["n/a"])
    carriers = [s.subject for s in cohort.scans if s.diagnosis == "AD" and (np.asarray(nib.load(
        simulation_subject_map(simulation_root(config.bids_dir), s.subject, cohort.space, cohort.res_label,
                               "probseg")).dataobj) > 0.5).any()]
    assert len(carriers) >= 4 and set(table["label"]) == {"AD"} and set(table["reference"]) == {"simulation"}
    assert set(table["method"]) == {"IG", "Saliency", "InputMagnitude", "InputMagnitudeintensity",
                                    "InputMagnitudelogjacobian", "GreyMatterPrior"}
    auc = table[(table["metric"] == "roc_auc") & (table["sign"] == "absolute")].set_index("method")
    assert (auc["n_subjects"] == len(carriers)).all() and (auc["chance"] == 0.5).all()
    assert (auc["n_bootstrap"] == config.evaluation.n_bootstrap).all()
    assert auc.loc["IG", "ci_low"] > 0.5  # truth + noise finds each subject's own atrophy
    assert auc.loc["IG", "control"] in ("InputMagnitude", "GreyMatterPrior")
    assert pd.isna(auc.loc["GreyMatterPrior", "vs_control"]) and not isinstance(auc.loc["GreyMatterPrior", "control"],
                                                                               str)
    side = json.loads((group / "subject_overlap.json").read_text())
    assert sorted(side["SubjectReferences"]["simulation"]["Subjects"]) == sorted(carriers)
    from adheat_app.citation import dataset_citation

    text, _ = dataset_citation(config, derivs)
    assert f"the simulated atrophy of each of {len(carriers)} participants" in text and "subject-level" in text


def _scan(subject: str, diagnosis: str, session: str | None = None):
    from pathlib import Path

    from adheat_app.cohort import Scan

    return Scan(subject, session, Path("unused"), Path("unused"), diagnosis, 1 if diagnosis == "AD" else None)


def test_a_map_equal_to_its_own_subjects_truth_scores_one_and_another_subjects_truth_lower():
    """Six subjects with disjoint truths (four AD, two MCI): a map equal to its subject's own truth scores ROC AUC 1,
    the next subject's truth scores below chance, and beats it as a control; the labels are reported apart and a
    subject's two sessions count once."""
    from types import SimpleNamespace

    from adheat_app.evaluation.reference import Reference
    from adheat_app.evaluation.subject_scores import SubjectScorer

    mask = np.ones(V, dtype=bool)
    blocks = [(np.arange(V) >= 20 * i) & (np.arange(V) < 20 * (i + 1)) for i in range(6)]
    truths = {f"{i:02d}": Reference("simulation", b.astype(np.float32), 0.5, "block", "hand") for i, b in
              enumerate(blocks)}
    scans = [_scan(f"{i:02d}", "AD" if i < 4 else "MCI") for i in range(6)] + [_scan("07", "CN")]
    scans[0] = _scan("00", "AD", "1")
    scans.insert(1, _scan("00", "AD", "2"))
    scorer = SubjectScorer({"simulation": truths}, SimpleNamespace(scans=tuple(scans)), mask)
    assert len(scorer.keys) == 7  # the CN subject has no truth
    keys = [s.key for s in scans]
    subject = [int(s.subject) for s in scans]
    own = np.stack([blocks[i % 6] + RANK for i in subject])  # the CN subject's row is not scored
    other = np.stack([blocks[(i + 1) % 6] + RANK for i in subject])
    scorer.score("Own", "method", "absolute", keys, own)
    scorer.score("Other", "method", "absolute", keys, other)
    scorer.score("InputMagnitude", "control", "absolute", keys, other)
    table = scorer.table(200, 0)
    auc = table[table["metric"] == "roc_auc"].set_index(["method", "label"])
    assert auc.loc[("Own", "AD"), "value"] == pytest.approx(1.0) and auc.loc[("Own", "MCI"), "value"] == 1.0
    assert auc.loc[("Own", "AD"), "n_subjects"] == 4 and auc.loc[("Own", "MCI"), "n_subjects"] == 2
    assert auc.loc[("Other", "AD"), "ci_high"] < 0.5 == auc.loc[("Other", "AD"), "chance"]
    assert auc.loc[("Own", "AD"), "control"] == "InputMagnitude"
    assert auc.loc[("Own", "AD"), "vs_control_ci_low"] > 0 and auc.loc[("Own", "AD"), "p_control"] < 0.05
    paired = 1.0 - auc.loc[("Other", "AD"), "subject_mean"]  # the mean over subjects of Own - InputMagnitude
    assert auc.loc[("Own", "AD"), "vs_control_ci_low"] <= paired <= auc.loc[("Own", "AD"), "vs_control_ci_high"]
    share = table[(table["metric"] == "average_precision")]["chance"]
    assert np.allclose(share, 0.1)  # each truth covers 20 of the 200 voxels
    bounded = table.dropna(subset=["ci_low", "ci_high"])
    assert ((bounded["ci_low"] <= bounded["value"]) & (bounded["value"] <= bounded["ci_high"])).all()


def _hand_tables(ig_random: float = 0.7):
    """overlap / difference rows by hand: IG 0.8, Saliency 0.6, InputMagnitude 0.55, IGRandom ``ig_random``."""
    overlap = pd.DataFrame([
        {"method": m, "kind": k, "label": "all", "reference": "ref", "sign": "absolute", "metric": "roc_auc",
         "value": v, "ci_low": v - 0.05, "ci_high": v + 0.05, "chance": 0.5}
        for m, k, v in [("IG", "method", 0.8), ("Saliency", "method", 0.6), ("InputMagnitude", "control", 0.55),
                        ("IGRandom", "control", ig_random)]])
    pair = {"label": "all", "reference": "ref", "sign_a": "absolute", "sign_b": "absolute", "metric": "roc_auc"}
    differences = pd.DataFrame([
        {**pair, "method_a": "IG", "method_b": "InputMagnitude", "difference": 0.25, "ci_low": 0.2, "ci_high": 0.3,
         "p_value": 0.002},
        {**pair, "method_a": "IGRandom", "method_b": "IG", "difference": -0.1, "ci_low": -0.15, "ci_high": 0.02,
         "p_value": 0.09},
        {**pair, "method_a": "InputMagnitude", "method_b": "Saliency", "difference": -0.05, "ci_low": -0.1,
         "ci_high": 0.01, "p_value": 0.2}])
    return overlap, differences


def test_answer_table_reads_paired_differences_in_either_order_and_the_strongest_control_decides():
    """By hand: IG - InputMagnitude stored forward, IGRandom - IG stored backward (its sign and bounds flip).
    IGRandom (0.7) is IG's strongest control and IG does not beat it; Saliency's is InputMagnitude."""
    from adheat_app.evaluation.answer import answer_table

    overlap, differences = _hand_tables()
    answer = answer_table(overlap, differences, "all", {"IG": True, "Saliency": True}, {"IG", "Saliency"})
    answer = answer.set_index("method")
    assert list(answer.index) == ["IG", "Saliency"]
    assert answer.loc["IG", ["vs_random", "vs_random_ci_low", "vs_random_ci_high"]].tolist() == \
        pytest.approx([0.1, -0.02, 0.15])
    assert answer.loc["IG", "control"] == "IGRandom" and answer.loc["Saliency", "control"] == "InputMagnitude"
    assert answer.loc["IG", "above_random"] is False and not answer.loc["IG", "finds_reference"]
    assert answer.loc["Saliency", ["vs_control", "vs_control_ci_low", "vs_control_ci_high"]].tolist() == \
        pytest.approx([0.05, -0.01, 0.1])
    assert not answer.loc["Saliency", "above_control"] and answer.loc["Saliency", "above_chance"]
    # a weaker random-model control: InputMagnitude is IG's strongest, which it beats (p 0.002, Holm over 2: 0.004)
    overlap, differences = _hand_tables(ig_random=0.5)
    answer = answer_table(overlap, differences, "all", {"IG": True, "Saliency": True}, {"IG", "Saliency"})
    ig = answer.set_index("method").loc["IG"]
    assert ig["control"] == "InputMagnitude" and ig["finds_reference"] and ig["p_holm"] == pytest.approx(0.004)
    # a model not better than chance finds nothing
    answer = answer_table(overlap, differences, "all", {"IG": False, "Saliency": True}, {"IG", "Saliency"})
    assert not answer.set_index("method").loc["IG", "finds_reference"]
    # the spatial null enters the primary p-value: a map no better than smooth random maps finds nothing
    answer = answer_table(overlap, differences, "all", {"IG": True}, {"IG"}, {("IG", "ref"): (0.7, 0.08, 0.2)})
    ig = answer.set_index("method").loc["IG"]
    assert ig["p_holm"] == pytest.approx(0.2) and not ig["finds_reference"]


def test_evaluation_rerun_skips(evaluated):
    config, derivs, cohort, truth = evaluated
    stamps = {p: p.stat().st_mtime_ns for p in (derivs.root / "group").rglob("*") if p.is_file()}
    run_evaluation(config, derivs, cohort, truth.template)
    assert {p: p.stat().st_mtime_ns for p in (derivs.root / "group").rglob("*") if p.is_file()} == stamps


@pytest.mark.slow
@pytest.mark.parametrize("null", [False, True])
def test_cohort_reference_finds_planted_atrophy_and_nothing_in_a_null_cohort(tmp_path, null):
    from adheat_app.evaluation.cohort_reference import cohort_paths, cohort_reference

    config, derivs, cohort, truth = make_preprocessed_cohort(tmp_path, n_subjects=20, resolution=4.0, seed=2,
                                                             effect_size=0.5, null=null,
                                                             evaluation__n_permutations=200,
                                                             execution__nprocs=0)  # the default: every CPU
    [ref] = cohort_reference(config, derivs, cohort, truth.template)  # one input channel: one reference
    mask = truth.template.mask_array()
    found = ref.binary() & mask
    paths = cohort_paths(derivs, cohort)
    assert paths["t"].name == f"space-{cohort.space}_res-{cohort.res_label}_desc-ADvsCN_stat-t_statmap.nii.gz"
    assert np.array_equal(np.asarray(nib.load(paths["mask"]).dataobj) > 0, found)
    if null:
        assert not found.any()  # family-wise error control: no voxel survives
    else:
        planted = (truth.probseg > 0.5) & mask
        dice = 2 * (found & planted).sum() / (found.sum() + planted.sum())
        assert dice >= 0.5, dice
        t_map = np.asarray(nib.load(paths["t"]).dataobj)
        assert np.median(t_map[found & planted]) < 0  # atrophy: lower intensity in AD


def _nearest_focus_mm(img, foci: np.ndarray) -> float:
    """Distance (mm) from the voxel of the image's maximum to the nearest focus."""
    data = np.asarray(img.dataobj)
    peak = np.unravel_index(np.argmax(data), data.shape)
    world = img.affine[:3, :3] @ np.array(peak) + img.affine[:3, 3]
    return float(np.min(np.linalg.norm(foci - world, axis=1)))


@pytest.mark.parametrize("name", ["ad_vbm_frisoni2002_sleuth.txt", "ad_vbm_foci_frisoni2002.tsv"])
def test_foci_files_give_an_ale_map_peaking_at_a_focus(name):
    from adheat_app.evaluation.meta_analysis import ale, read_foci

    meta = shared_data_or_skip() / "meta"
    path = meta / name
    dataset = read_foci(path)
    foci = dataset.coordinates[["x", "y", "z"]].to_numpy(float)
    table = pd.read_csv(meta / "ad_vbm_foci_frisoni2002.tsv", sep="\t", comment="#")
    assert len(dataset.ids) == 1 and len(foci) == len(table)  # one experiment, every focus read
    assert np.allclose(np.sort(foci[:, 0]), np.sort(table["x"]), atol=2.5)  # MNI kept (NiMARE rounds to its grid)
    stat, mask, how = ale(dataset, threshold=0.005, n_iters=0, seed=0)
    assert _nearest_focus_mm(stat, table[["x", "y", "z"]].to_numpy(float)) <= 2.0  # within a 2 mm voxel
    assert how.startswith("ALE > 0.005") and 0 < np.asarray(mask.dataobj).sum() < 20_000


def test_foci_tsv_errors_name_the_file_and_the_fix(tmp_path):
    from adheat_app.evaluation.meta_analysis import read_foci

    bad = tmp_path / "foci.tsv"
    bad.write_text("study\tx\ty\tz\nA\t1\t2\t3\n")
    with pytest.raises(InputError, match="--reference-map .*foci.tsv: columns n_subjects are missing"):
        read_foci(bad)
    with pytest.raises(InputError, match="file not found"):
        read_foci(tmp_path / "absent.txt")


@pytest.mark.slow
def test_meta_reference_from_foci_fwe_cluster_at_the_consistent_focus(tmp_path, caplog):
    """20 experiments, each with one focus near the left hippocampus (jitter 3 mm) and 5 random foci."""
    from adheat_app.evaluation.meta_analysis import meta_paths, meta_reference

    rng = np.random.default_rng(0)
    rows = []
    for e in range(20):
        rows.append((f"s{e}", 20, *(np.array([-24.0, -10.0, -20.0]) + rng.normal(0, 3, 3))))
        rows += [(f"s{e}", 20, *rng.uniform([-60, -90, -30], [60, 60, 60])) for _ in range(5)]
    foci = tmp_path / "foci.tsv"
    pd.DataFrame(rows, columns=["study", "n_subjects", "x", "y", "z"]).to_csv(foci, sep="\t", index=False)
    config, derivs, cohort, truth = make_preprocessed_cohort(tmp_path, n_subjects=4, resolution=4.0,
                                                             evaluation__reference_map=str(foci),
                                                             evaluation__n_permutations=100)
    ref = meta_reference(config, derivs, cohort, truth.template)
    found = np.argwhere(ref.binary())
    assert ref.name == "meta" and 20 < len(found) < 400
    centre = truth.template.affine[:3, :3] @ found.mean(axis=0) + truth.template.affine[:3, 3]
    assert np.linalg.norm(centre - [-24, -10, -20]) < 4  # the only cluster is the consistent focus
    assert all(p.is_file() for p in meta_paths(derivs, cohort).values())
    assert "fewer than" not in caplog.text  # 20 experiments: no warning
    write_synthetic_heatmaps(derivs, cohort, truth, methods=("Saliency",))
    run_evaluation(config, derivs, cohort, truth.template)  # reuses the saved ALE and scores against it
    overlap = pd.read_csv(derivs.root / "group" / "overlap.tsv", sep="\t")
    assert {"meta", "anatomicalprior", "simulation"} <= set(overlap["reference"])
    one = tmp_path / "one.tsv"
    pd.DataFrame(rows[:6], columns=["study", "n_subjects", "x", "y", "z"]).to_csv(one, sep="\t", index=False)
    ref = meta_reference(config.replace("evaluation", reference_map=str(one), reference_threshold=0.001), derivs,
                         cohort, truth.template)
    assert "1 experiment(s)" in caplog.text and "fewer than the 17" in ref.description


def test_top_k_with_tied_zeros_uses_k_voxels_and_scores_chance():
    """A map that is 0 on 90 % of the voxels: its top 20 % holds 20 % of the voxels, the tied zeros counting
    at random (in expectation), so a map unrelated to the reference scores the chance level of that set."""
    rng = np.random.default_rng(3)
    n = 100_000
    reference = rng.permutation(n) < n // 10
    relevance = np.where(rng.random(n) < 0.1, rng.random(n), 0.0)
    m = overlap_metrics(relevance, reference, reference.astype(float))
    levels = chance_levels(reference.mean(), n)
    assert np.allclose(m["overlap_fraction"], levels["overlap_fraction"], atol=0.01)
    assert np.allclose(m["dice"], levels["dice"], rtol=0, atol=0.004)  # 1 %: 1000 voxels, binomial SD 0.0017
    # by hand: 10 voxels, values 3, 2, then eight zeros; reference = the first and two of the zeros; top 50 % = 5
    # voxels: 3, 2 and 3 of the 8 tied zeros, each inside with probability 2/8
    tiny = overlap_metrics(np.array([3.0, 2, 0, 0, 0, 0, 0, 0, 0, 0]), np.array([1, 0, 1, 1, 0, 0, 0, 0, 0, 0], bool),
                           np.zeros(10), percents=(50.0,))
    assert tiny["overlap_fraction"][0] == pytest.approx((1 + 3 * 2 / 8) / 5)


def test_two_sessions_of_a_subject_are_resampled_together():
    """Hand-built: three subjects, two sessions each; every resample counts both sessions of a subject alike, and
    the interval of a subject-level effect is wider than if the six scans were independent subjects."""
    subjects = ["01", "01", "02", "02", "03", "03"]
    counts = resample_counts(subjects, 500, seed=0)
    assert np.array_equal(counts[:, 0], counts[:, 1]) and np.array_equal(counts[:, 4], counts[:, 5])
    assert np.all(counts.sum(axis=1) == 6)  # three subject draws of two scans each
    scans = resample_counts([f"{s}-{i}" for i, s in enumerate(subjects)], 500, seed=0)
    assert not np.array_equal(scans[:, 0], scans[:, 1])
    # subject 01's sessions map the reference, the others map its complement: the mean map's AUC hinges on
    # how often subject 01 is drawn
    maps = np.array([REFERENCE + 0.1 * RANK] * 2 + [~REFERENCE + 0.1 * RANK] * 4, dtype=np.float32)
    spread = {name: np.nanstd(bootstrap(maps, [REFERENCE], c)[0]["mass_inside"])
              for name, c in (("subjects", counts), ("scans", scans))}
    assert spread["subjects"] > 1.2 * spread["scans"], spread


def test_basic_interval_holds_its_estimate_when_every_resample_is_lower():
    """Resamples all below the full-sample value (the noisier-resample bias of rank metrics): the percentile
    interval would exclude the value; the basic interval holds the bias-corrected estimate, within [0, 1]."""
    from adheat_app.evaluation.intervals import holm, two_sided_p

    samples = np.linspace(0.6, 0.8, 101)[:, None]
    estimate, low, high = basic_interval(np.array([0.85]), samples)
    assert estimate[0] == pytest.approx(1.0)  # 2 * 0.85 - 0.7 = 1.0
    assert low[0] <= estimate[0] <= high[0] and low[0] == pytest.approx(2 * 0.85 - 0.795)
    assert basic_interval(0.5, np.full((10,), 0.5)) == (0.5, 0.5, 0.5)
    assert np.isnan(basic_interval(0.5, np.empty((0,)))[1])
    assert two_sided_p(0.2, np.linspace(0.1, 0.3, 99)) == pytest.approx(2 / 100)  # no resample reaches 0.4
    assert two_sided_p(0.0, np.linspace(-0.1, 0.1, 99)) == pytest.approx(1.0)
    assert np.allclose(holm([0.01, 0.04, 0.03, np.nan]), [0.03, 0.06, 0.06, np.nan], equal_nan=True)


def test_spatial_null_measures_smoothness_and_spreads_wider_than_voxelwise_chance():
    from scipy.ndimage import gaussian_filter

    from adheat_app.evaluation.spatial_null import smoothness, spatial_null

    rng = np.random.default_rng(0)
    shape = (40, 40, 40)
    mask = np.ones(shape, bool)
    mask[:, :, :4] = False
    field = gaussian_filter(rng.standard_normal(shape), 2.0, mode="wrap")  # FWHM 2 * 2.355 voxels
    assert np.allclose(smoothness(field[mask], mask), 2 * 2.3548, rtol=0.1)
    reference = np.zeros(shape, bool)
    reference[10:18, 10:18, 10:18] = True
    values = np.abs(field[mask])
    smooth = spatial_null(values, mask, [reference[mask]], [0.5], "roc_auc", 60, seed=1)[0]
    white = spatial_null(rng.random(int(mask.sum())), mask, [reference[mask]], [0.5], "roc_auc", 60, seed=1)[0]
    assert abs(smooth.mean - 0.5) < 0.05 and smooth.sd > 3 * white.sd  # a smooth map's AUC strays far more
    assert smooth.p > 0.5


def test_cohort_test_with_covariates_does_not_call_a_site_effect_an_ad_effect():
    """No disease effect; site 1 scans are brighter in one block; AD subjects mostly at site 1 (80 %). Without the
    site covariate the block is an 'AD effect'; with it, nothing survives."""
    from adheat_app.evaluation.cohort_reference import confound_r2, two_sample_test

    rng = np.random.default_rng(4)
    n, shape = 40, (8, 8, 8)
    positive = np.arange(n) < n // 2
    site = np.isin(np.arange(n), [*range(16), *range(20, 24)]).astype(float)  # 16 of 20 AD, 4 of 20 CN
    images = 0.5 * rng.standard_normal((n, *shape)).astype(np.float32)
    images[:, 2:5, 2:5, 2:5] += 2.0 * site[:, None, None, None]
    mask = np.ones(shape, bool)
    covariates = pd.DataFrame({"site_1": site})
    assert 0 < confound_r2(np.where(positive, 1.0, -1.0), covariates) < 0.5
    args = (images, positive, mask, np.eye(4), 200, 0)
    _, naive = two_sample_test(*args)
    _, adjusted = two_sample_test(*args, covariates=covariates)
    significant = -np.log10(0.05)
    assert (naive[2:5, 2:5, 2:5] > significant).sum() >= 5
    assert not (adjusted > significant).any()
    # perfectly confounded: the class is the site
    assert confound_r2(np.where(positive, 1.0, -1.0), pd.DataFrame({"site_1": positive.astype(float)})) > 0.99


def test_each_map_meets_the_controls_of_its_channel_and_its_own_model_free_maps():
    from adheat_app.evaluation.controls import applicable_controls, input_controls, is_control

    controls = ["InputMagnitude", "InputMagnitudeintensity", "InputMagnitudelogjacobian", "BaselineDeviation",
                "BaselineDeviationlogjacobian", "GreyMatterPrior", "IGRandom", "IGRandomlogjacobian", "SaliencyRandom"]
    assert all(is_control(c) for c in controls) and not any(is_control(m) for m in ("IG", "IGlogjacobian", "SVM"))
    assert applicable_controls("IG", controls) == ["InputMagnitude", "BaselineDeviation", "GreyMatterPrior",
                                                   "IGRandom"]
    assert applicable_controls("IGlogjacobian", controls) == [
        "InputMagnitudelogjacobian", "BaselineDeviationlogjacobian", "GreyMatterPrior", "IGRandomlogjacobian"]
    assert applicable_controls("SVM", controls) == ["InputMagnitude", "BaselineDeviation", "GreyMatterPrior"]
    values = np.abs(np.random.default_rng(0).standard_normal((3, 2, 50)))
    maps = input_controls(values, ("intensity", "logjacobian"), "InputMagnitude")
    assert set(maps) == {"InputMagnitude", "InputMagnitudeintensity", "InputMagnitudelogjacobian"}
    assert np.allclose(maps["InputMagnitude"].sum(axis=1), 1) and np.allclose(
        maps["InputMagnitude"], (maps["InputMagnitudeintensity"] + maps["InputMagnitudelogjacobian"]) / 2)
    assert set(input_controls(values[:, :1], ("intensity",), "InputMagnitude")) == {"InputMagnitude"}


def test_correct_incorrect_groups_follow_repeat_0_like_the_maps(tmp_path):
    """With --repeats the predictions table has a row per repeat; the maps' correct/incorrect split is repeat 0's."""
    from types import SimpleNamespace

    from adheat_app.evaluation.group_maps import read_predictions
    from adheat_app.layout import PREDICTIONS, group_table

    path = group_table(tmp_path, PREDICTIONS)
    path.parent.mkdir(parents=True)
    pd.DataFrame({"model": ["resnet3d"] * 4 + ["SVM"], "repeat": [0, 1, 0, 1, 0],
                  "subject": ["01", "01", "02", "02", "01"], "session": ["n/a"] * 5,
                  "target": [1, 1, 0, 0, 1], "predicted": [1, 0, 1, 0, 0]}).to_csv(path, sep="\t", index=False)
    assert read_predictions(SimpleNamespace(root=tmp_path), "resnet3d") == {"sub-01": 1, "sub-02": 0}


def _toy_scorer(n_repeats: int):
    """A :class:`Scorer` of 10 subjects (AD and CN) on the toy voxels of :data:`REFERENCE`, 300 resamples."""
    from types import SimpleNamespace

    from adheat_app.cohort import Cohort, Scan
    from adheat_app.evaluation.reference import Reference
    from adheat_app.evaluation.scorer import Scorer

    scans = tuple(Scan(f"{i:02d}", None, None, None, "AD" if i % 2 else "CN", i % 2, None) for i in range(10))
    cohort = Cohort(scans, "MNI", "4", "AD", "CN", ("intensity",))
    config = SimpleNamespace(evaluation=SimpleNamespace(n_bootstrap=300), execution=SimpleNamespace(seed=4))
    reference = Reference("truth", REFERENCE.astype(np.float32), 0.5, "toy", "toy")
    return Scorer(config, cohort, {}, [reference], np.ones(V, bool), n_repeats=n_repeats), [s.key for s in scans]


def test_repeats_average_the_repeats_scores_and_widen_the_interval():
    """Two repeats whose maps differ (one finds the reference, one much less): the value is the mean of the two
    repeats' scores, each resample scores one repeat (its subjects drawn as with one repeat, shared by every map of
    the label), so the interval spans both and is wider than one repeat's; every value lies in its interval."""
    from adheat_app.evaluation.scoring import overlap_rows, paired_differences

    rng = np.random.default_rng(0)
    noise = rng.random((2, 10, V)).astype(np.float32)
    maps = [noise[0] + 0.12 * REFERENCE, noise[1] + 0.03 * REFERENCE]  # repeat 0 finds it, repeat 1 barely
    one, keys = _toy_scorer(1)
    one.subjects("IG", "method", "all", "absolute", maps[0], keys, repeat=0)
    two, _ = _toy_scorer(2)
    assert np.array_equal(two.counts["all"], one.counts["all"]) and set(two.draws["all"]) == {0, 1}
    for repeat in (0, 1):
        two.subjects("IG", "method", "all", "absolute", maps[repeat], keys, repeat)
        two.subjects("Control", "control", "all", "absolute", np.abs(maps[repeat] - 1), keys, repeat)
    assert len(one.scores) == 1 and [s.n_repeats for s in two.scores] == [2, 2]
    drawn = two.draws["all"] == 0
    assert np.array_equal(two.scores[0].samples[0]["roc_auc"][drawn], one.scores[0].samples[0]["roc_auc"][drawn])
    single = [overlap_metrics(m.mean(axis=0), REFERENCE, REFERENCE.astype(float))["roc_auc"] for m in maps]
    assert two.scores[0].point[0]["roc_auc"] == pytest.approx(np.mean(single)) and single[0] - single[1] > 0.15
    rows = {n: overlap_rows(s.scores, ["truth"], one.chances, repeats=n == 2) for n, s in ((1, one), (2, two))}
    auc = {n: r[(r["metric"] == "roc_auc") & (r["method"] == "IG")].iloc[0] for n, r in rows.items()}
    assert auc[2]["ci_high"] - auc[2]["ci_low"] > 1.3 * (auc[1]["ci_high"] - auc[1]["ci_low"])
    assert auc[2]["ci_low"] < single[1] + 0.05 and auc[2]["ci_high"] > single[0] - 0.05
    assert "n_repeats" not in rows[1] and set(rows[2]["n_repeats"]) == {2}
    for table in rows.values():
        bounded = table.dropna(subset=["ci_low"])
        assert ((bounded["ci_low"] <= bounded["value"]) & (bounded["value"] <= bounded["ci_high"])).all()
    paired = paired_differences(two.scores, ["truth"])  # same repeat draw on both sides of a difference
    assert ((paired["ci_low"] <= paired["difference"]) & (paired["difference"] <= paired["ci_high"])).all()
    two.subjects("Saliency", "method", "all", "absolute", maps[0], keys, 0)
    assert two.discard("Saliency") == ["all"]  # a repeat without usable maps: nothing of the method is kept
    two.subjects("Saliency", "method", "all", "absolute", maps[1], keys, 1)
    assert len(two.scores) == 2 and two.discard("IG") == []
