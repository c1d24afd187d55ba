"""Preprocessing: input checks, accuracy against the simulator's known warps, reruns, fMRIPrep reuse, real heads.

The accuracy tests run the real pipeline (N4, registration with antspyx,
resampling, z-scoring) once on a small simulated cohort at 2 mm with two extra
scans: one truncated file (a per-subject failure that must not stop the
others) and one image already in template space (registration skipped).
Regions of the template are mapped to each native grid through the saved
inverse transform and compared with the simulator's native truth masks.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from adheat_app import simulate
from adheat_app.bids import Derivatives, T1wInput
from adheat_app.config import build_config
from adheat_app.errors import InputError
from adheat_app.preprocess import checks, intensity, pipeline, qc, register, run_preprocessing, to_native
from adheat_app.templates import get_template
from conftest import shared_data_or_skip, write_tiny_bids


def _config(bids_dir: Path, out: Path, resolution: float, **preprocessing):
    execution = {"resolution": resolution, "nprocs": 2, "omp_nthreads": 1, "seed": 7}
    return build_config(bids_dir, out, ("participant",), {}, {"execution": execution,
                                                              "preprocessing": preprocessing})


def _save(path: Path, data: np.ndarray, affine=np.diag([1.0, 1.0, 1.0, 1.0]), qform: int = 1) -> Path:
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=qform)
    img.set_sform(affine, code=qform)
    nib.save(img, path)
    return path


# ---------------------------------------------------------------------------------------------- input checks

def _bad_inputs(folder: Path) -> dict[str, tuple[Path, str]]:
    rng = np.random.default_rng(0)
    good = rng.random((20, 22, 18)).astype(np.float32) + 0.1
    truncated = _save(folder / "truncated_T1w.nii.gz", good)
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    not_gzip = folder / "garbage_T1w.nii.gz"
    not_gzip.write_bytes(b"this is not a NIfTI file at all" * 20)
    text = folder / "scan_T1w.mgz"
    text.write_bytes(b"\0" * 400)
    nan = good.copy()
    nan[3, 4, 5] = np.nan
    inf = good.copy()
    inf[1, 1, 1] = np.inf
    return {
        "4D": (_save(folder / "fourd_T1w.nii.gz", np.stack([good, good], -1)), "one 3D volume"),
        "non-NIfTI": (text, "not a NIfTI file"),
        "truncated": (truncated, "truncated or corrupt"),
        "corrupt": (not_gzip, "cannot be read as NIfTI"),
        "all-zero": (_save(folder / "zero_T1w.nii.gz", np.zeros_like(good)), "every voxel is 0"),
        "NaN": (_save(folder / "nan_T1w.nii.gz", nan), "NaN or Inf"),
        "Inf": (_save(folder / "inf_T1w.nii.gz", inf), "NaN or Inf"),
        "voxel size": (_save(folder / "tiny_T1w.nii.gz", good, np.diag([0.01, 1.0, 1.0, 1.0])), "voxel size"),
        "no qform/sform": (_save(folder / "noorient_T1w.nii.gz", good, qform=0), "qform_code and sform_code"),
    }


def test_every_bad_input_gives_a_one_line_message_naming_the_file(tmp_path):
    for name, (path, expected) in _bad_inputs(tmp_path).items():
        with pytest.raises(InputError) as info:
            checks.load_t1w(path)
        message = str(info.value)
        assert expected in message, (name, message)
        assert str(path) in message and "\n" not in message, name


def test_load_reorients_to_ras_and_keeps_world_coordinates(tmp_path):
    data = np.arange(10 * 12 * 14, dtype=np.int16).reshape(10, 12, 14) + 1
    affine = np.array([[0, 0, -1.2, 50], [-1.0, 0, 0, 30], [0, 1.1, 0, -20], [0, 0, 0, 1]])
    img = checks.load_t1w(_save(tmp_path / "lia_T1w.nii.gz", data, affine))
    assert nib.aff2axcodes(img.affine) == ("R", "A", "S") and img.get_data_dtype() == np.float32
    voxel = np.array([2, 3, 4])
    world = affine @ np.r_[voxel, 1]
    ras_voxel = np.rint(np.linalg.solve(img.affine, world)[:3]).astype(int)
    assert img.get_fdata()[tuple(ras_voxel)] == data[tuple(voxel)]


# ---------------------------------------------------------------------------------------------- small units

def test_histogram_normalisation_matches_template_scale_then_zscores():
    rng = np.random.default_rng(1)
    mask = np.zeros((20, 20, 20), bool)
    mask[4:16, 4:16, 4:16] = True
    reference = rng.gamma(4.0, 1.0, mask.shape)
    scan = 300 * reference ** 1.3 + 50
    for method in ("zscore", "histogram"):
        out = intensity.normalise(scan, mask, method, reference, mask)
        assert abs(out[mask].mean()) < 1e-5 and abs(out[mask].std() - 1) < 1e-4 and not out[~mask].any()
    matched = intensity.histogram_standardise(scan, mask, reference, mask)
    assert np.corrcoef(matched[mask], reference[mask])[0, 1] > 0.999


def test_template_white_matter_is_the_brightest_tissue_class():
    # three tissue classes at 0.2 (CSF), 0.6 (GM) and 1.0 (WM), with a little noise
    rng = np.random.default_rng(0)
    labels = rng.choice(3, size=(20, 20, 20), p=[0.2, 0.45, 0.35])
    template = np.array([0.2, 0.6, 1.0])[labels] + rng.normal(0, 0.03, labels.shape)
    mask = np.ones(labels.shape, bool)
    mask[:2] = False
    wm = intensity.template_white_matter(template, mask)
    assert (wm == ((labels == 2) & mask)).mean() > 0.999


def test_whitematter_normalisation_keeps_a_regional_change_regional():
    """Darkening one region moves z-scores everywhere, but no white-matter-scaled voxel outside the region."""
    rng = np.random.default_rng(2)
    labels = rng.choice(3, size=(24, 24, 24), p=[0.2, 0.45, 0.35])
    template = np.array([0.2, 0.6, 1.0])[labels] + rng.normal(0, 0.03, labels.shape)
    mask = np.ones(labels.shape, bool)
    region = np.zeros(labels.shape, bool)
    region[:8] = True
    region &= labels == 1  # grey matter of one slab loses 40 % of its intensity
    scan = 700 * template
    atrophied = np.where(region, 0.6 * scan, scan)
    rest = mask & ~region
    for method, moves in (("whitematter", False), ("zscore", True)):
        before = intensity.normalise(scan, mask, method, template, mask)
        after = intensity.normalise(atrophied, mask, method, template, mask)
        shift = np.abs(after[rest] - before[rest]).max()
        assert bool(shift > 0.05) == moves, (method, shift)
        assert after[region].mean() < before[region].mean() - 0.1
    out = intensity.normalise(scan, mask, "whitematter", template, mask)
    assert np.median(out[labels == 2]) == pytest.approx(1.0, abs=0.01)  # white matter = 1, scale-free
    assert np.allclose(intensity.normalise(3 * scan, mask, "whitematter", template, mask), out, atol=1e-6)
    with pytest.raises(ValueError, match="white matter"):
        intensity.normalise(np.zeros_like(scan), mask, "whitematter", template, mask)


def test_outlier_flag_uses_median_mad_and_an_absolute_floor():
    values = pd.Series([0.96, 0.95, 0.97, 0.96, 0.80, 0.45])
    assert qc.flag_outliers(values).tolist() == [False, False, False, False, True, True]
    # Nearly equal scans: the scaled MAD (0.00074) would put the threshold at 0.9728 and flag 0.970; the spread
    # floor 0.01 puts it at 0.945. Missing values are not flagged.
    close = pd.Series([0.975, 0.975, 0.976, 0.975, 0.970, 0.940, np.nan])
    assert qc.flag_outliers(close).tolist() == [False] * 5 + [True, False]
    assert qc.flag_outliers(pd.Series([0.89] * 3), floor=qc.MIN_DICE).all()
    assert not qc.flag_outliers(pd.Series([0.89] * 3)).any()


def test_dice_against_hand_counted_overlap():
    a = np.zeros((4, 4, 4), bool)
    b = np.zeros((4, 4, 4), bool)
    a[:2] = True  # 32 voxels
    b[1:3] = True  # 32 voxels, 16 shared
    assert qc.dice(a, b) == pytest.approx(2 * 16 / 64)
    assert qc.dice(a, a) == 1.0 and qc.dice(a, ~a) == 0.0 and qc.dice(a & ~a, b & ~b) == 0.0


def test_qc_table_flags_a_brain_mask_outlier(tmp_path):
    """A scan whose brain outline drifted (Dice 0.85) is flagged although its NCC is normal."""
    derivs = Derivatives(tmp_path / "out", tmp_path / "bids")
    for sub, ncc, overlap in (("01", 0.96, 0.975), ("02", 0.95, 0.972), ("03", 0.96, 0.85), ("04", 0.96, None)):
        side = derivs.root / f"sub-{sub}" / "anat" / f"sub-{sub}_space-MNI152NLin2009cAsym_res-2_desc-preproc_T1w.json"
        side.parent.mkdir(parents=True)
        meta = {"RegistrationNCC": ncc, "InputSkullStripped": False, "Registration": {"Method": "syn"},
                "JacobianDeterminant": {"FoldedPercent": 0.0}}
        if overlap is not None:  # 04: written before the Dice was recorded
            meta["BrainMaskDice"] = overlap
        side.write_text(json.dumps(meta))
    table = pd.read_csv(qc.write_qc_table(derivs), sep="\t", dtype={"subject": str})
    assert table["outlier"].tolist() == [False, False, True, False]
    assert table["brain_dice"].tolist()[:3] == [0.975, 0.972, 0.85] and np.isnan(table["brain_dice"][3])


def test_workers_and_threads_follow_the_options(tmp_path):
    from adheat_app.preprocess.workflow import plan_workers

    cfg = _config(tmp_path, tmp_path / "out", 2.0)
    assert plan_workers(cfg, 5, 2.0) == (2, 1)
    assert plan_workers(cfg, 1, 2.0) == (1, 1)
    auto = cfg.replace("execution", nprocs=0, omp_nthreads=0, mem_gb=2.6)
    workers, threads = plan_workers(auto, 8, 1.0)
    assert workers == 1 and threads >= 1


# ---------------------------------------------------------------------------------------------- fMRIPrep reuse

def _fmriprep(folder: Path, subject: str, space: str, template) -> None:
    anat = folder / f"sub-{subject}" / "anat"
    anat.mkdir(parents=True)
    rng = np.random.default_rng(3)
    data = np.asarray(template.t1w.dataobj) * (1 + 0.02 * rng.standard_normal(template.shape))
    prefix = f"sub-{subject}_space-{space}_res-2"
    _save(anat / f"{prefix}_desc-preproc_T1w.nii.gz", data.astype(np.float32), template.affine, 4)
    _save(anat / f"{prefix}_desc-brain_mask.nii.gz", template.mask_array().astype(np.uint8), template.affine, 4)


def test_anat_derivatives_are_reused_without_registration(tmp_path, tf_home):
    template = get_template(4.0)
    bids_dir = write_tiny_bids(tmp_path / "bids", {"01": "AD", "02": "CN"})
    fmriprep = tmp_path / "fmriprep"
    for sub in ("01", "02"):
        _fmriprep(fmriprep, sub, template.space, get_template(2.0))
    cfg = _config(bids_dir, tmp_path / "out", 4.0, anat_derivatives=str(fmriprep))
    derivs = Derivatives(cfg.output_dir, bids_dir)
    inputs = [T1wInput(s, None, bids_dir / f"sub-{s}" / "anat" / f"sub-{s}_T1w.nii.gz") for s in ("01", "02")]
    assert run_preprocessing(cfg, inputs, derivs, template) == []
    for t1w in inputs:
        paths = pipeline.output_paths(derivs, t1w, template)
        side = json.loads(paths.image.with_name(paths.image.name.replace(".nii.gz", ".json")).read_text())
        assert side["Transforms"] is None and "no T1w<->template transforms" in side["Notes"][0]
        assert side["RegistrationNCC"] > 0.95 and side["AnatDerivatives"] is True
        assert not paths.forward.exists() and paths.mask.is_file() and paths.figure.is_file()
        data = np.asarray(nib.load(paths.image).dataobj)
        white_matter = intensity.template_white_matter(np.asarray(template.t1w.dataobj), template.mask_array() > 0)
        assert data.shape == template.shape and np.median(data[white_matter]) == pytest.approx(1.0, abs=0.01)
        assert side["IntensityNormalization"] == "whitematter"
        with pytest.raises(InputError, match="transform"):
            to_native(nib.load(paths.image), derivs, t1w)
    qc_table = pd.read_csv(cfg.output_dir / "group" / "preproc_qc.tsv", sep="\t", dtype={"subject": str})
    assert qc_table["subject"].tolist() == ["01", "02"] and not qc_table["outlier"].any()


def test_anat_derivatives_in_another_space_are_refused_before_writing(tmp_path, tf_home):
    template = get_template(4.0)
    bids_dir = write_tiny_bids(tmp_path / "bids", {"01": "AD"})
    fmriprep = tmp_path / "fmriprep"
    _fmriprep(fmriprep, "01", "MNI152NLin6Asym", get_template(2.0))
    cfg = _config(bids_dir, tmp_path / "out", 4.0, anat_derivatives=str(fmriprep))
    inputs = [T1wInput("01", None, bids_dir / "sub-01" / "anat" / "sub-01_T1w.nii.gz")]
    with pytest.raises(InputError, match="only in space.*MNI152NLin6Asym.*--output-spaces MNI152NLin2009cAsym"):
        run_preprocessing(cfg, inputs, Derivatives(cfg.output_dir, bids_dir), template)
    assert not cfg.output_dir.exists()


# ---------------------------------------------------------------------------------------------- simulated cohort

@pytest.fixture(scope="module")
def simulated(tmp_path_factory, tf_home):
    """Two simulated subjects at 2 mm, a truncated scan and a scan already in template space, preprocessed once.

    Made from the template itself (``anatomy=("template",)``): registration accuracy is measured against the
    exact truth, which only that parent has (other parents' regions come through a registration themselves)."""
    root = tmp_path_factory.mktemp("preproc")
    bids_dir = simulate.simulate_cohort(root / "bids", n_subjects=2, resolution=2.0, seed=11, effect_size=0.1,
                                        anatomy=("template",))
    template = get_template(2.0)
    broken = bids_dir / "sub-03" / "anat" / "sub-03_T1w.nii.gz"
    broken.parent.mkdir(parents=True)
    source = (bids_dir / "sub-01" / "anat" / "sub-01_T1w.nii.gz").read_bytes()
    broken.write_bytes(source[: len(source) // 3])
    in_template = bids_dir / "sub-04" / "anat" / "sub-04_T1w.nii.gz"
    in_template.parent.mkdir(parents=True)
    scaled = np.rint(np.asarray(template.t1w.dataobj) * 1000 / np.asarray(template.t1w.dataobj).max())
    _save(in_template, scaled.astype(np.int16), template.affine, 4)
    cfg = _config(bids_dir, root / "out", 2.0)
    derivs = Derivatives(cfg.output_dir, bids_dir)
    derivs.initialize()
    inputs = [T1wInput(s, None, bids_dir / f"sub-{s}" / "anat" / f"sub-{s}_T1w.nii.gz")
              for s in ("01", "02", "03", "04")]
    failed = run_preprocessing(cfg, inputs, derivs, template)
    return {"cfg": cfg, "derivs": derivs, "inputs": inputs, "failed": failed, "template": template,
            "bids": bids_dir}


def _sidecar(simulated, t1w) -> dict:
    path = pipeline.output_paths(simulated["derivs"], t1w, simulated["template"]).image
    return json.loads(path.with_name(path.name.replace(".nii.gz", ".json")).read_text())


@pytest.mark.slow
def test_broken_scan_fails_alone_with_a_crash_file_and_no_outputs(simulated):
    assert simulated["failed"] == ["sub-03"]
    crash = simulated["cfg"].output_dir / "logs" / "crash-sub-03.txt"
    first = crash.read_text().splitlines()[0]
    assert "sub-03_T1w.nii.gz" in first and ("truncated" in first or "cannot be read" in first)
    assert not (simulated["derivs"].root / "sub-03").exists()


@pytest.mark.slow
def test_outputs_sidecars_figure_and_qc_table(simulated):
    derivs, template = simulated["derivs"], simulated["template"]
    for t1w in simulated["inputs"][:2]:
        paths = pipeline.output_paths(derivs, t1w, template)
        for path in (paths.image, paths.mask, paths.forward, paths.inverse):
            assert path.is_file(), path
        assert paths.figure.read_text().lstrip().startswith("<?xml")
        side = _sidecar(simulated, t1w)
        for key in ("Sources", "SkullStripped", "RegistrationNCC", "InputHash", "Space", "Resolution", "Software",
                    "Registration", "WallTimeSeconds", "Template"):
            assert key in side, key
        assert side["InputSkullStripped"] is True and "sidecar" in side["SkullStripping"]["Decision"]
        assert side["Registration"]["Method"] == "syn" and side["Transforms"]["Inverse"].endswith("_xfm.h5")
        img = nib.load(paths.image)
        assert img.shape == template.shape and np.allclose(img.affine, template.affine)
        data = np.asarray(img.dataobj)
        mask = np.asarray(nib.load(paths.mask).dataobj) > 0
        # white-matter scaling (the default): the template's white matter inside the brain has median 1
        white_matter = intensity.template_white_matter(np.asarray(template.t1w.dataobj), template.mask_array() > 0)
        assert np.median(data[white_matter & mask]) == pytest.approx(1.0, abs=1e-4) and not data[~mask].any()
        logjac = np.asarray(nib.load(paths.logjacobian).dataobj)  # small anatomy changes, global scale removed
        brain = template.mask_array()
        assert not logjac[~brain].any() and 0 < np.abs(logjac[brain]).mean() < 0.3
        assert json.loads(paths.logjacobian.with_name(paths.logjacobian.name.replace(".nii.gz", ".json"))
                          .read_text())["FoldedVoxels"] == 0
    skipped = pipeline.output_paths(derivs, simulated["inputs"][3], template).logjacobian
    assert not np.asarray(nib.load(skipped).dataobj).any()  # registration skipped: the identity deforms nothing
    table = pd.read_csv(derivs.root / "group" / "preproc_qc.tsv", sep="\t", dtype={"subject": str})
    assert table["subject"].tolist() == ["01", "02", "04"]
    assert {"ncc", "brain_dice", "folded_percent", "outlier"} <= set(table.columns) and not table["outlier"].any()
    assert (table["brain_dice"] >= 0.93).all(), table["brain_dice"].tolist()  # measured 0.955-0.964
    assert table["folded_percent"].tolist()[:2] == [0, 0] and np.isnan(table["folded_percent"][2])  # 04: no SyN


@pytest.mark.slow
def test_registration_ncc_is_high_without_folding(simulated):
    for t1w in simulated["inputs"][:2]:
        side = _sidecar(simulated, t1w)
        assert side["RegistrationNCC"] >= 0.95
        assert side["JacobianDeterminant"]["FoldedPercent"] == 0 and side["JacobianDeterminant"]["Min"] > 0


def test_jacobian_of_a_known_affine_is_its_determinant(tmp_path):
    """A pure scaling diag(1.1, 1.2, 0.9) has determinant 1.188 everywhere (hand-computed)."""
    import ants

    transform = ants.create_ants_transform(transform_type="AffineTransform", dimension=3,
                                           matrix=np.diag([1.1, 1.2, 0.9]), center=(1.0, -2.0, 3.0))
    ants.write_transform(transform, str(tmp_path / "scale.mat"))
    grid = nib.Nifti1Image(np.zeros((12, 14, 10), np.float32), np.diag([2.0, 2.0, 2.0, 1.0]))
    determinant = register.jacobian(tmp_path / "scale.mat", grid, tmp_path / "work")
    assert determinant.shape == (12, 14, 10)
    np.testing.assert_allclose(determinant[2:-2, 2:-2, 2:-2], 1.1 * 1.2 * 0.9, rtol=1e-3)


def test_log_jacobian_removes_global_scale_and_keeps_a_local_contraction(tmp_path):
    """phi(x) = s (x - c) + c - a (x - p) g(x), g a Gaussian bump at p: det J(p) = (s - a)^3 (hand-computed), so
    the log Jacobian beyond the global scale s is 3 log(1 - a / s) at p and 0 far from it."""
    import ants

    s, a, sigma = 1.1, 0.2, 10.0
    grid = nib.Nifti1Image(np.zeros((56, 60, 56), np.float32), np.diag([2.0, 2.0, 2.0, 1.0]))
    image = register.to_ants(grid)
    index = np.indices(grid.shape).reshape(3, -1).T
    points = (np.asarray(image.direction) @ (index * np.asarray(image.spacing)).T).T + np.asarray(image.origin)
    centre = points.mean(axis=0)
    bump = points[np.argmin(((points - centre - np.array([10.0, -6.0, 4.0])) ** 2).sum(1))]  # a grid point
    weight = np.exp(-((points - bump) ** 2).sum(1) / (2 * sigma ** 2))[:, None]
    displacement = (s - 1) * (points - centre) - a * (points - bump) * weight
    field = ants.from_numpy(displacement.reshape(*grid.shape, 3).astype(np.float32), origin=image.origin,
                            spacing=image.spacing, direction=image.direction, has_components=True)
    ants.image_write(field, str(tmp_path / "warp.nii.gz"))
    mask = np.zeros(grid.shape, bool)
    mask[4:-4, 4:-4, 4:-4] = True
    logjac, info = register.log_jacobian(tmp_path / "warp.nii.gz", grid, mask, tmp_path / "work")
    assert info["GlobalLogDeterminant"] == pytest.approx(3 * np.log(s), abs=0.01) and info["FoldedVoxels"] == 0
    at_bump = int(np.argmin(((points - bump) ** 2).sum(1)))
    assert logjac.reshape(-1)[at_bump] == pytest.approx(3 * np.log(1 - a / s), abs=0.03)
    far = (((points - bump) ** 2).sum(1) > (3.5 * sigma) ** 2) & mask.reshape(-1)
    assert np.abs(logjac.reshape(-1)[far]).max() < 0.02 and not logjac[~mask].any()


@pytest.mark.slow
def test_template_regions_mapped_to_native_match_the_truth(simulated):
    """Atlas hippocampus and planted region through the inverse transform vs. the simulator's native truth."""
    truth = simulate.build_ground_truth(2.0)
    template = simulated["template"]
    truth_dir = simulated["bids"] / "derivatives" / "simulation"
    for t1w in simulated["inputs"][:2]:
        for desc, region in (("atrophy", truth.region), ("hippocampus", np.isin(truth.labels,
                                                                                 truth.hippocampus_values))):
            mapped = to_native(nib.Nifti1Image(region.astype(np.float32), template.affine), simulated["derivs"],
                               t1w, interpolation="linear")
            native = np.asarray(nib.load(truth_dir / f"sub-{t1w.subject}" / "anat" /
                                         f"sub-{t1w.subject}_desc-{desc}_mask.nii.gz").dataobj) > 0
            assert mapped.shape == native.shape
            assert qc.dice(np.asarray(mapped.dataobj) >= 0.5, native) >= 0.80, (t1w.key, desc)


@pytest.mark.slow
def test_input_in_template_space_skips_registration(simulated):
    side = _sidecar(simulated, simulated["inputs"][3])
    assert "already in template space" in side["Registration"]["Method"]
    assert "registration skipped" in side["Notes"][0] and side["RegistrationNCC"] > 0.99


@pytest.mark.slow
def test_rerun_skips_and_same_seed_gives_identical_arrays(simulated, tmp_path):
    cfg, derivs, template = simulated["cfg"], simulated["derivs"], simulated["template"]
    t1w = simulated["inputs"][0]
    paths = pipeline.output_paths(derivs, t1w, template)
    stamp = paths.image.stat().st_mtime_ns
    assert run_preprocessing(cfg, [t1w], derivs, template) == []
    assert paths.image.stat().st_mtime_ns == stamp
    again = _config(cfg.bids_dir, tmp_path / "again", 2.0)
    other = Derivatives(again.output_dir, cfg.bids_dir)
    assert run_preprocessing(again, [t1w], other, template) == []
    second = pipeline.output_paths(other, t1w, template)
    for a, b in ((paths.image, second.image), (paths.mask, second.mask)):
        assert np.array_equal(np.asarray(nib.load(a).dataobj), np.asarray(nib.load(b).dataobj))


# ---------------------------------------------------------------------------------------------- real heads

@pytest.mark.slow
@pytest.mark.real_data
def test_real_whole_heads_register_well(tmp_path, tf_home):
    """A native 0.88 mm uint8 head (chris_t1) and Colin27 in MNI space, not skull-stripped, at 2 mm.

    The issue's target: NCC >= 0.85 inside the template brain mask, and no
    folding. Measured: 0.863 (chris_t1) and 0.882 (Colin27), no voxel with a
    Jacobian determinant <= 0 (minimum 0.036 / 0.145); 0.80 / 0.84 with one SyN
    stage of step 0.3, and 0.27 / 0.68 for a naive whole-head SyN.
    """
    real = shared_data_or_skip() / "real"
    bids_dir = write_tiny_bids(tmp_path / "bids", {"01": "CN", "02": "CN"})
    inputs = []
    for sub, name in (("01", "chris_t1.nii.gz"), ("02", "colin27_ch2_MRIcron.nii.gz")):
        target = bids_dir / f"sub-{sub}" / "anat" / f"sub-{sub}_T1w.nii.gz"
        shutil.copyfile(real / name, target)
        target.with_name(f"sub-{sub}_T1w.json").unlink()
        inputs.append(T1wInput(sub, None, target))
    cfg = _config(bids_dir, tmp_path / "out", 2.0)
    derivs = Derivatives(cfg.output_dir, bids_dir)
    template = get_template(2.0)
    assert run_preprocessing(cfg, inputs, derivs, template) == []
    for t1w in inputs:
        path = pipeline.output_paths(derivs, t1w, template).image
        side = json.loads(path.with_name(path.name.replace(".nii.gz", ".json")).read_text())
        assert side["InputSkullStripped"] is False and side["SkullStripping"]["Method"] == "deepbet"
        assert side["RegistrationNCC"] >= 0.85, (t1w.key, side["RegistrationNCC"])
        assert side["BrainMaskDice"] >= 0.95, (t1w.key, side["BrainMaskDice"])  # measured 0.978 / 0.973
        assert side["JacobianDeterminant"]["FoldedPercent"] == 0, (t1w.key, side["JacobianDeterminant"])
    assert not list((tmp_path / "out" / "work").rglob("*.h5")), "temporary transforms left in the work folder"


# ---------------------------------------------------------------------------------------------- options

def _whole_head(folder: Path) -> Path:
    """A synthetic 'whole head' at 2 mm: a 17 x 20 x 23 cm ellipsoid (about 4 l), far above a brain's volume."""
    grid = np.indices((100, 120, 110)).astype(np.float32)
    radii, centre = np.array([42.5, 50.0, 57.5]), np.array([50.0, 60.0, 55.0])
    inside = (((grid - centre[:, None, None, None]) / radii[:, None, None, None]) ** 2).sum(0) <= 1
    return _save(folder / "head_T1w.nii.gz", np.where(inside, 100.0, 0.0).astype(np.float32),
                 np.diag([2.0, 2.0, 2.0, 1.0]))


@pytest.mark.parametrize(("mode", "image", "sidecar", "stripped", "reason"), [
    ("skip", "head", None, True, "--skull-strip skip"),
    ("force", "brain", None, False, "--skull-strip force"),
    ("auto", "brain", None, True, "foreground volume"),
    ("auto", "head", None, False, "foreground volume"),
    ("auto", "head", True, True, "input sidecar SkullStripped=true"),
    ("auto", "brain", False, False, "input sidecar SkullStripped=false"),
])
def test_skull_strip_modes_decide_as_documented(tmp_path, mode, image, sidecar, stripped, reason):
    """skip and force override everything; auto trusts the sidecar, else the foreground volume (2400 ml)."""
    from adheat_app.preprocess import skullstrip

    if image == "head":
        path = _whole_head(tmp_path)
    else:
        bids_dir = simulate.simulate_cohort(tmp_path / "bids", n_subjects=2, resolution=4.0, seed=1)
        path = bids_dir / "sub-01" / "anat" / "sub-01_T1w.nii.gz"
    side = Path(str(path).replace(".nii.gz", ".json"))
    side.unlink(missing_ok=True)
    if sidecar is not None:
        side.write_text(json.dumps({"SkullStripped": sidecar}))
    decided, why = skullstrip.is_skull_stripped(nib.load(path), path, mode)
    assert decided is stripped and why.startswith(reason)
    if reason == "foreground volume":
        volume = skullstrip.foreground_volume_ml(nib.load(path))
        # brain: the simulated brain (NLin6Asym parent) smoothed by one 4 mm voxel measures ~1.9 l, under the
        # rule's 2.4 l; head: 4/3 pi abc = 4.1 l
        assert (volume < 2100) if image == "brain" else (3500 < volume < 4500), volume


@pytest.mark.parametrize("mode", ["auto", "skip", "force"])
def test_affine_registration_and_skull_strip_mode_reach_the_outputs(tmp_path, monkeypatch, mode):
    """--registration affine: no SyN, no Jacobian, good NCC and brain Dice at 4 mm; deepbet runs only for force."""
    from adheat_app.preprocess import skullstrip

    calls = []

    def deepbet_stand_in(img):  # deepbet is trained on whole heads; record the call, mask the stripped brain
        calls.append(img.shape)
        return skullstrip.stripped_mask(img)

    monkeypatch.setattr(skullstrip, "deepbet_mask", deepbet_stand_in)
    # the registration target as parent: the NCC bound was set on it (from the MNI152NLin6Asym parent, affine
    # registration reaches NCC 0.714-0.717 here), and no parent head goes through the stand-in
    bids_dir = simulate.simulate_cohort(tmp_path / "bids", n_subjects=2, resolution=4.0, seed=3,
                                        anatomy=("template",))
    config = _config(bids_dir, tmp_path / "out", 4.0, registration="affine", skull_strip=mode)
    derivs = Derivatives(config.output_dir, bids_dir)
    t1w = T1wInput("01", None, bids_dir / "sub-01" / "anat" / "sub-01_T1w.nii.gz")
    template = get_template(4.0)
    result = pipeline.process(config, derivs, t1w, template)
    side = json.loads(pipeline.output_paths(derivs, t1w, template).image.with_suffix("").with_suffix(".json")
                      .read_text())
    assert side["Registration"]["Method"] == "affine" and "JacobianDeterminant" not in side
    assert result["ncc"] > 0.75 and result["dice"] > 0.85
    assert side["SkullStripMode"] == mode
    assert side["SkullStripping"]["Method"] == ("deepbet" if mode == "force" else "none (input already skull-stripped)")
    assert len(calls) == (mode == "force")


@pytest.mark.slow
def test_log_jacobian_shows_planted_tissue_loss_and_nothing_far_from_it(tmp_path, tf_home):
    """Tissue-loss cohort at 4 mm through the participant level: the mean log Jacobian of the planted region is
    lower in AD than in CN (Cohen's d <= -1; measured -2.5 on 40 subjects with the earlier simulator), and the
    brain farther than 30 mm from every planted region shows no such difference (|d| < 1)."""
    from scipy.ndimage import distance_transform_edt

    bids_dir = simulate.simulate_cohort(tmp_path / "bids", n_subjects=12, resolution=4.0, seed=2, nprocs=2)
    template = get_template(4.0)
    cfg = _config(bids_dir, tmp_path / "out", 4.0)
    derivs = Derivatives(cfg.output_dir, bids_dir)
    derivs.initialize()
    participants = pd.read_csv(bids_dir / "participants.tsv", sep="\t")
    inputs = [T1wInput(s.removeprefix("sub-"), None, bids_dir / s / "anat" / f"{s}_T1w.nii.gz")
              for s in participants["participant_id"]]
    assert run_preprocessing(cfg, inputs, derivs, template) == []
    truth_dir = bids_dir / "derivatives" / "simulation"
    truth = np.asarray(nib.load(next(truth_dir.glob(
        f"space-{template.space}_res-4_desc-atrophy_probseg.nii.gz"))).dataobj) > 0.5
    # far from every region any subject lost volume in (the cohort map covers the regions most AD subjects lose)
    planted = np.any([np.asarray(nib.load(p).dataobj) > 0.01 for p in truth_dir.glob("sub-*/anat/*_probseg.nii.gz")],
                     axis=0)
    far = (distance_transform_edt(~planted) * 4.0 > 30) & template.mask_array()
    means = {"region": {"AD": [], "CN": []}, "far": {"AD": [], "CN": []}}
    for t1w, diagnosis in zip(inputs, participants["diagnosis"]):
        logjac = np.asarray(nib.load(pipeline.output_paths(derivs, t1w, template).logjacobian).dataobj)
        means["region"][diagnosis].append(logjac[truth].mean())
        means["far"][diagnosis].append(logjac[far].mean())

    def cohen_d(values: dict) -> float:
        ad, cn = np.asarray(values["AD"]), np.asarray(values["CN"])
        return float((ad.mean() - cn.mean()) / np.sqrt((ad.var(ddof=1) + cn.var(ddof=1)) / 2))

    assert cohen_d(means["region"]) <= -1.0, means
    assert abs(cohen_d(means["far"])) < 1.0, means
