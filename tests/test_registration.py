"""Registration backends: each honours the contract; ANTs unchanged by the refactor; FireANTs close to ANTs.

Every registered backend runs once (module fixture) through the real pipeline
on a head made from the template by a known map at 4 mm
(:mod:`registration_inputs`: an affine plus a planted Gaussian loss in the left
medial temporal lobe), so the truth is known in both spaces. The ANTs numbers
pinned in :data:`ANTS_BEFORE` were measured on the code before the backends
became plugins (the arrays of the new code were bit-identical there, one
thread); they are compared to float tolerance, as another CPU may round ANTs'
float arithmetic differently.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from adheat_app.bids import Derivatives, T1wInput
from adheat_app.citation import boilerplate_dir
from adheat_app.config import build_config
from adheat_app.errors import InputError
from adheat_app.layout import sidecar_path
from adheat_app.preprocess import pipeline, qc, run_preprocessing, to_native
from adheat_app.preprocess.backends import BACKENDS, Backend
from adheat_app.preprocess.backends._contract import check_backend
from adheat_app.templates import get_template
from adheat_app.validate import check_registration
from conftest import shared_data_or_skip, write_tiny_bids
from registration_inputs import moved_template, native_region, planted_region

#: Outputs of the ANTs backends on the moved head at 4 mm before the refactor (seed 7, one thread):
#: NCC, brain-mask Dice, brain-mask voxels, mean registered intensity in the template brain, the sum of a box of
#: the template mapped to the native grid (linear and nearest neighbour), and for SyN the mean log Jacobian of the
#: planted region, its SD in the brain, the smallest Jacobian determinant and the global log determinant.
ANTS_BEFORE = {
    "syn": {"ncc": 0.953, "dice": 0.9667, "mask": 30716, "image_mean": 0.776263, "native": 4583.95,
            "native_nn": 4719, "lj_region": -0.167239, "lj_sd": 0.156220, "jmin": 0.4066, "global": -0.065906},
    "affine": {"ncc": 0.9591, "dice": 0.9528, "mask": 31612, "image_mean": 0.778009, "native": 4461.40,
               "native_nn": 4588},
}
#: How far FireANTs may fall below ANTs SyN (measured at 4 mm: NCC 0.948 vs 0.953 and Dice 0.987 vs 0.967 on the
#: moved head, NCC 0.833 vs 0.836 and Dice 0.987 vs 0.974 on chris_t1).
FIREANTS_MARGIN = {"ncc": 0.03, "dice": 0.02}


def _config(bids_dir, out, registration, resolution=4.0):
    return build_config(bids_dir, out, ("participant",), {}, {
        "execution": {"resolution": resolution, "nprocs": 1, "omp_nthreads": 1, "seed": 7},
        "preprocessing": {"registration": registration}})


@pytest.fixture(scope="module")
def moved(tmp_path_factory, tf_home):
    """The moved head in a one-subject BIDS dataset, and a lazy per-backend run of the participant level."""
    root = tmp_path_factory.mktemp("registration")
    bids_dir = write_tiny_bids(root / "bids", {"01": "AD"})
    shutil.rmtree(bids_dir / "sub-01")
    template = get_template(4.0)
    path = moved_template(bids_dir / "sub-01" / "anat", get_template(2.0))
    t1w = T1wInput("01", None, path)
    runs = {}

    def run(name: str) -> dict:
        if name not in runs:
            config = _config(bids_dir, root / f"out-{name}", name)
            derivs = Derivatives(config.output_dir, bids_dir)
            derivs.initialize()
            assert run_preprocessing(config, [t1w], derivs, template) == []  # one job, one thread: as pinned
            paths = pipeline.output_paths(derivs, t1w, template, name)
            runs[name] = {"paths": paths, "derivs": derivs, "sidecar": json.loads(sidecar_path(paths.image).read_text())}
        return runs[name]

    return {"run": run, "template": template, "t1w": t1w}


def _box_to_native(moved, run, interpolation):
    region = np.zeros(moved["template"].shape, np.float32)
    region[5:15, 10:20, 8:14] = 1
    return np.asarray(to_native(nib.Nifti1Image(region, moved["template"].affine), run["derivs"], moved["t1w"],
                                interpolation).dataobj)


# ---------------------------------------------------------------------------------------------- the contract

@pytest.mark.parametrize("name", list(BACKENDS))
def test_backend_declares_what_the_pipeline_and_the_methods_text_read(name):
    backend = BACKENDS[name]
    check_backend(name, backend)
    text = backend.methods_text({"antspyx": "0.6.3", "fireants": "1.5.0"})
    bib = (boilerplate_dir() / "CITATION.bib").read_text()
    cited = [key.strip("[]@;, ") for key in text.split() if key.startswith("[@")]
    assert cited and all(f"{{{key}," in bib for key in cited), (name, text)


def test_a_backend_that_breaks_the_contract_is_refused_naming_each_rule():
    class Broken(Backend):
        name = "other"

    with pytest.raises(TypeError) as info:
        check_backend("broken", Broken())
    message = str(info.value)
    for rule in ("'other', not the registered 'broken'", "summary is empty", "transform_extension is empty",
                 "register() is not implemented", "methods_text() is not implemented"):
        assert rule in message, rule


def test_registration_choices_and_refusals_follow_the_registry(tmp_path, monkeypatch):
    from adheat_app.cli.parser import build_parser

    action = next(a for a in build_parser()._actions if a.dest == "preprocessing.registration")
    assert tuple(action.choices) == tuple(sorted(BACKENDS))
    bids_dir = write_tiny_bids(tmp_path / "bids", {"01": "AD"})
    with pytest.raises(InputError, match="--registration nosuch: unknown registration backend; available: "):
        check_registration(_config(bids_dir, tmp_path / "o", "nosuch"))
    linear = [name for name, backend in BACKENDS.items() if not backend.deformable]
    config = build_config(bids_dir, tmp_path / "o", ("participant",), {}, {
        "preprocessing": {"registration": linear[0]}, "training": {"input": "logjacobian"}})
    with pytest.raises(InputError, match=f"--registration {linear[0]} does not compute"):
        check_registration(config)
    monkeypatch.setattr(BACKENDS["fireants"], "requires", ("no_such_package_here",))
    with pytest.raises(InputError, match="--registration fireants needs the Python package no_such_package_here"):
        check_registration(_config(bids_dir, tmp_path / "o", "fireants"))


@pytest.mark.slow
@pytest.mark.parametrize("name", list(BACKENDS))
def test_backend_honours_its_contract_on_the_moved_head(moved, name):
    """Same outputs and QC fields for every backend; transforms map images forward and labels back."""
    backend, run, template = BACKENDS[name], moved["run"](name), moved["template"]
    paths, side = run["paths"], run["sidecar"]
    for path in (paths.image, paths.mask, paths.forward, paths.inverse, paths.figure):
        assert path.is_file(), path
    assert paths.forward.name.endswith("_xfm" + backend.transform_extension)
    assert json.loads(sidecar_path(paths.inverse).read_text())["Type"] == backend.transform_type
    assert side["Registration"]["Method"] == name and side["Transforms"]["Inverse"].endswith(
        backend.transform_extension)
    qc_fields = {"RegistrationNCC", "BrainMaskDice", "NCCBeforeRegistration", "Transforms", "StepSeconds"}
    assert qc_fields <= set(side) and side["RegistrationNCC"] > 0.9 and side["BrainMaskDice"] > 0.9, side
    assert paths.logjacobian.is_file() is backend.deformable
    assert ("JacobianDeterminant" in side) is backend.deformable
    truth = native_region(moved["t1w"].path, template)
    region = planted_region(template).astype(np.float32)
    for interpolation in ("nearest", "linear"):
        mapped = to_native(nib.Nifti1Image(region, template.affine), run["derivs"], moved["t1w"], interpolation)
        values = np.asarray(mapped.dataobj)
        if interpolation == "nearest":
            assert set(np.unique(values)) <= {0.0, 1.0}
        assert qc.dice(values >= 0.5, truth) >= 0.75, (name, interpolation, qc.dice(values >= 0.5, truth))
    forward = backend.apply(nib.load(moved["t1w"].path), template.t1w, paths.forward, "label")
    assert forward.shape == template.shape


# ---------------------------------------------------------------------------------------------- ANTs unchanged

@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(ANTS_BEFORE))
def test_ants_outputs_are_unchanged_by_the_backend_refactor(moved, name):
    before, run, template = ANTS_BEFORE[name], moved["run"](name), moved["template"]
    side, paths = run["sidecar"], run["paths"]
    brain = template.mask_array()
    assert side["RegistrationNCC"] == pytest.approx(before["ncc"], abs=2e-3)
    assert side["BrainMaskDice"] == pytest.approx(before["dice"], abs=2e-3)
    mask = np.asarray(nib.load(paths.mask).dataobj) > 0
    assert mask.sum() == pytest.approx(before["mask"], rel=5e-3)
    image = np.asarray(nib.load(paths.image).dataobj)
    assert image[brain].mean() == pytest.approx(before["image_mean"], abs=2e-3)
    assert _box_to_native(moved, run, "linear").sum() == pytest.approx(before["native"], rel=5e-3)
    assert _box_to_native(moved, run, "nearest").sum() == pytest.approx(before["native_nn"], rel=5e-3)
    if "lj_region" in before:
        logjac = np.asarray(nib.load(paths.logjacobian).dataobj)
        assert logjac[planted_region(template)].mean() == pytest.approx(before["lj_region"], abs=5e-3)
        assert logjac[brain].std() == pytest.approx(before["lj_sd"], abs=5e-3)
        assert side["JacobianDeterminant"]["Min"] == pytest.approx(before["jmin"], abs=0.02)
        assert side["LogJacobian"]["GlobalLogDeterminant"] == pytest.approx(before["global"], abs=2e-3)


# ---------------------------------------------------------------------------------------------- FireANTs

@pytest.mark.slow
def test_fireants_reaches_ants_quality_and_shows_the_planted_loss(moved):
    """NCC and brain-mask Dice within :data:`FIREANTS_MARGIN` of SyN; the planted region's log Jacobian below
    -0.1 (SyN: -0.167; measured FireANTs -0.209) and nothing comparable more than 40 mm from it (mean within 0.05
    of 0; measured 0.035, SyN 0.009)."""
    fire, syn, template = moved["run"]("fireants"), moved["run"]("syn"), moved["template"]
    for key, field in (("ncc", "RegistrationNCC"), ("dice", "BrainMaskDice")):
        assert fire["sidecar"][field] >= syn["sidecar"][field] - FIREANTS_MARGIN[key], (field, fire["sidecar"])
    assert fire["sidecar"]["JacobianDeterminant"]["FoldedPercent"] == 0
    logjac = np.asarray(nib.load(fire["paths"].logjacobian).dataobj)
    region = planted_region(template)
    far = template.mask_array() & ~planted_region(template, radius_mm=40.0)
    assert logjac[region].mean() < -0.1 and abs(logjac[far].mean()) < 0.05, (logjac[region].mean(),
                                                                              logjac[far].mean())


@pytest.mark.slow
@pytest.mark.real_data
def test_fireants_registers_a_real_whole_head_as_well_as_ants(tmp_path, tf_home):
    """chris_t1 (0.88 mm, not skull-stripped) at 4 mm: FireANTs' NCC and Dice within the margin of SyN's."""
    real = shared_data_or_skip() / "real"
    bids_dir = write_tiny_bids(tmp_path / "bids", {"01": "CN"})
    target = bids_dir / "sub-01" / "anat" / "sub-01_T1w.nii.gz"
    shutil.copyfile(real / "chris_t1.nii.gz", target)
    target.with_name("sub-01_T1w.json").unlink()
    template, t1w, scores = get_template(4.0), T1wInput("01", None, target), {}
    for name in ("syn", "fireants"):
        config = _config(bids_dir, tmp_path / name, name)
        derivs = Derivatives(config.output_dir, bids_dir)
        assert run_preprocessing(config, [t1w], derivs, template) == []
        scores[name] = json.loads(sidecar_path(pipeline.output_paths(derivs, t1w, template, name).image).read_text())
    for key, field in (("ncc", "RegistrationNCC"), ("dice", "BrainMaskDice")):
        assert scores["fireants"][field] >= scores["syn"][field] - FIREANTS_MARGIN[key], (field, scores)


def test_readme_lists_every_backend_as_the_registry_declares_it():
    from adheat_app.preprocess.backends._catalog import backends_markdown

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert backends_markdown() in readme, "paste backends_markdown() into README.md's 'Registration backends'"
