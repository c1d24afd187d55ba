"""One scan from its T1w (or its reused fMRIPrep outputs) to the template-space outputs.

Steps for a T1w: validate and reorient to RAS (:mod:`.checks`), brain
extraction unless the input is already skull-stripped (:mod:`.skullstrip`),
cropping to the brain and, where the scan is finer than the analysis grid,
anti-aliased down-sampling to it (smoothed as the template is, so fine detail
does not alias into the output), N4 bias-field correction inside the brain
mask, brain-to-brain registration to the template by the ``--registration``
backend (:mod:`.backends`; skipped, with identity transforms, when the input
already matches the template at least as well as :data:`TEMPLATE_SPACE_NCC`),
resampling to the analysis grid, intensity normalisation inside the warped
brain mask (:mod:`.intensity`) and quality control (:mod:`.qc`). After a
deformable registration the log Jacobian determinant of the deformation,
beyond its global linear part, is written on the analysis grid as well
(:meth:`.backends.Backend.log_jacobian`; the tensor-based-morphometry input of
``--input logjacobian|both``, and of the default ``auto``). N4 runs on the brain
alone: the bias field that matters is the brain's, and the cropped brain is
half the voxels of the head (half the time: ``docs/performance.md``).

Everything is computed in memory and under the job's own folder of the work
directory (which also receives the registration libraries' temporary files); outputs are written
only when every step succeeded, the preprocessed T1w's sidecar last, as the
completion mark checked on reruns.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from adheat_app import plotting
from adheat_app.bids import Derivatives, T1wInput, file_hash, is_complete, software_versions
from adheat_app.config import RunConfig
from adheat_app.io import atomic_path, nifti_image, write_json, write_text
from adheat_app.layout import logjacobian_path, preproc_paths, registration_figure, sidecar_path
from adheat_app.preprocess import checks, intensity, qc, register, skullstrip
from adheat_app.preprocess.backends import BACKENDS, Backend, Registration
from adheat_app.preprocess.backends._contract import SKIPPED
from adheat_app.preprocess.reuse import AnatFiles
from adheat_app.templates import Template, grid_for, resample

LOGGER = logging.getLogger(__name__)

#: NCC with the template, before registration, from which an input counts as already in template space.
TEMPLATE_SPACE_NCC = 0.92


@dataclass(frozen=True)
class OutputPaths:
    """Where the outputs of one input go."""

    image: Path
    mask: Path
    forward: Path
    inverse: Path
    figure: Path
    logjacobian: Path


def output_paths(derivs: Derivatives, t1w: T1wInput, template: Template, registration: str = "syn"
                 ) -> OutputPaths:
    """The output paths of one input (README.md, "Outputs"); transforms in ``registration``'s format."""
    image, mask = preproc_paths(derivs.root, t1w, template.space, template.res_label)
    extension = BACKENDS[registration].transform_extension
    forward = derivs.subject_path(t1w.subject, t1w.session, "xfm", extension, from_="T1w", to=template.space,
                                  mode="image")
    inverse = derivs.subject_path(t1w.subject, t1w.session, "xfm", extension, from_=template.space, to="T1w",
                                  mode="image")
    figure = registration_figure(derivs.root, t1w)
    return OutputPaths(image, mask, forward, inverse, figure,
                       logjacobian_path(derivs.root, t1w, template.space, template.res_label))


def settings(config: RunConfig, template: Template) -> dict:
    """The parameters that change the outputs (recorded in the sidecar, compared on reruns)."""
    pre = config.preprocessing
    return {"Space": template.space, "Resolution": template.res_description, "RegistrationMethod": pre.registration,
            "SkullStripMode": pre.skull_strip, "IntensityNormalization": pre.intensity_norm,
            "AnatDerivatives": bool(pre.anat_derivatives), "Seed": config.execution.seed}


def input_hash(t1w: T1wInput, anat: AnatFiles | None) -> str:
    """Content hash of the files an output is made from."""
    if anat is None:
        return file_hash(t1w.path)
    return file_hash(anat.image)[:32] + file_hash(anat.mask)[:32]


def is_done(config: RunConfig, derivs: Derivatives, t1w: T1wInput, template: Template,
            anat: AnatFiles | None) -> bool:
    """Whether every output of ``t1w`` exists and was made from the same input with the same settings."""
    backend = BACKENDS[config.preprocessing.registration]
    paths = output_paths(derivs, t1w, template, backend.name)
    needed = [paths.mask, paths.figure] + ([] if anat else [paths.forward, paths.inverse])
    if anat is None and backend.deformable:
        needed.append(paths.logjacobian)
    if not all(p.is_file() for p in needed):
        return False
    return is_complete(paths.image, InputHash=input_hash(t1w, anat), **settings(config, template))


@dataclass
class _Result:
    """Arrays of one processed scan, on the template grid, before anything is written."""

    warped: np.ndarray
    mask: np.ndarray
    meta: dict
    registration: Registration | None
    logjacobian: np.ndarray | None = None


def _native_brain(config: RunConfig, t1w: T1wInput, template: Template, timing: dict
                  ) -> tuple[nib.Nifti1Image, nib.Nifti1Image, dict]:
    """The T1w's brain and mask, cropped, on the working grid, N4-corrected; and the skull-stripping record."""
    start = time.perf_counter()
    img = checks.load_t1w(t1w.path)
    stripped, reason = skullstrip.is_skull_stripped(img, t1w.path, config.preprocessing.skull_strip)
    timing["Load"] = time.perf_counter() - start
    start = time.perf_counter()
    if stripped:
        mask = skullstrip.stripped_mask(img)
        method = "none (input already skull-stripped)"
    else:
        mask = skullstrip.deepbet_mask(img)
        timing["BrainExtraction"] = time.perf_counter() - start
        method = "deepbet"
    if mask.sum() * np.prod(img.header.get_zooms()[:3]) < 300_000:
        raise RuntimeError(f"{t1w.path}: the brain mask holds only {mask.sum()} voxels; check the image "
                           "(is it a T1w of a whole brain?)")
    start = time.perf_counter()
    brain, mask_img = _working_grid(*_crop(np.where(mask, np.asarray(img.dataobj, dtype=np.float32), 0),
                                           mask, img.affine), template.resolution)
    brain = register.n4(brain, np.asarray(mask_img.dataobj) > 0)
    timing["N4"] = time.perf_counter() - start
    return brain, mask_img, {"InputSkullStripped": stripped,
                             "SkullStripping": {"Method": method, "Decision": reason},
                             "BiasFieldCorrection": "N4BiasFieldCorrection (ANTs) inside the brain mask, shrink "
                                                    "factor 4"}


def _register(config: RunConfig, t1w: T1wInput, template: Template, brain: nib.Nifti1Image, workdir: Path,
              timing: dict) -> tuple[Registration, dict]:
    """Register ``brain`` with the ``--registration`` backend, or not at all when it is already in template space."""
    backend = BACKENDS[config.preprocessing.registration]
    start = time.perf_counter()
    before = qc.ncc(np.asarray(resample(brain, template.shape, template.affine).dataobj),
                    np.asarray(template.t1w.dataobj, dtype=np.float32), template.mask_array())
    notes = []
    if before >= TEMPLATE_SPACE_NCC:
        registration = backend.identity(workdir)
        notes.append(f"{t1w.path} is already in {template.space} space (NCC {before:.3f} with the template "
                     "before registration): registration skipped")
    else:
        registration = backend.register(brain, _registration_target(template)[0], config, workdir)
    timing["Registration"] = time.perf_counter() - start
    return registration, {"Registration": registration.settings, "NCCBeforeRegistration": round(before, 4),
                          "Notes": notes}


def _deformation(backend: Backend, registration: Registration, template: Template, workdir: Path, timing: dict
                 ) -> tuple[np.ndarray | None, dict]:
    """The log Jacobian on the analysis grid and the Jacobian QC of a deformable backend (None, {} otherwise)."""
    if not backend.deformable:
        return None, {}
    if registration.settings.get("Method") == SKIPPED:  # the identity deforms nothing
        return np.zeros(template.shape, np.float32), {
            "LogJacobian": {"Method": "identity transform (input already in template space): 0 everywhere"}}
    target, target_mask = _registration_target(template)
    start = time.perf_counter()  # on the grid the deformation was estimated on
    determinant = backend.jacobian(registration.forward, target, workdir)[np.asarray(target_mask.dataobj) > 0]
    timing["Jacobian"] = time.perf_counter() - start
    meta = {"JacobianDeterminant": {"Min": round(float(determinant.min()), 4),
                                    "FoldedPercent": round(100 * float(np.mean(determinant <= 0)), 4),
                                    "Region": "template brain mask on the registration grid"}}
    start = time.perf_counter()
    logjacobian, meta["LogJacobian"] = backend.log_jacobian(registration.forward, template.t1w,
                                                            template.mask_array(), workdir)
    timing["LogJacobian"] = time.perf_counter() - start
    return logjacobian, meta


def _native(config: RunConfig, t1w: T1wInput, template: Template, workdir: Path, timing: dict) -> _Result:
    backend = BACKENDS[config.preprocessing.registration]
    brain, mask_img, meta = _native_brain(config, t1w, template, timing)
    registration, registered = _register(config, t1w, template, brain, workdir, timing)
    start = time.perf_counter()
    warped = np.asarray(backend.apply(brain, template.t1w, registration.forward).dataobj)
    warped_mask = np.asarray(backend.apply(mask_img, template.t1w, registration.forward).dataobj) >= 0.5
    timing["Resampling"] = time.perf_counter() - start
    meta.update(registered)
    logjacobian, deformation = _deformation(backend, registration, template, workdir, timing)
    meta.update(deformation)
    return _Result(warped.astype(np.float32), warped_mask, meta, registration, logjacobian)


def _working_grid(brain: nib.Nifti1Image, mask: nib.Nifti1Image, resolution: float
                  ) -> tuple[nib.Nifti1Image, nib.Nifti1Image]:
    """Brain and mask down-sampled (anti-aliased) to ``resolution`` mm where the scan is finer; else as they are."""
    zooms = np.sqrt((brain.affine[:3, :3] ** 2).sum(axis=0))
    scale = np.maximum(resolution / zooms, 1.0)
    if np.all(scale < 1.2):
        return brain, mask
    affine = brain.affine.copy()
    affine[:3, :3] = brain.affine[:3, :3] * scale
    shape = tuple(int(n) for n in np.ceil(np.asarray(brain.shape) / scale))
    down = np.asarray(resample(mask, shape, affine).dataobj) >= 0.5
    data = np.where(down, np.asarray(resample(brain, shape, affine).dataobj), 0).astype(np.float32)
    return nib.Nifti1Image(data, affine), nib.Nifti1Image(down.astype(np.float32), affine)


@functools.lru_cache(maxsize=2)
def _registration_target(template: Template) -> tuple[nib.Nifti1Image, nib.Nifti1Image]:
    """The template brain and its mask on a grid no finer than :data:`register.REGISTRATION_MM`, cut to its box.

    Built once per template and process (0.4 s per scan at 1 mm otherwise); callers only read the images.
    """
    image, mask = template.t1w, template.mask_array()
    if template.resolution < register.REGISTRATION_MM:
        shape, affine = grid_for(image, register.REGISTRATION_MM)
        mask = np.asarray(resample(nib.Nifti1Image(mask.astype(np.float32), image.affine), shape, affine).dataobj
                          ) >= 0.5
        image = resample(image, shape, affine)
    data = np.where(mask, np.asarray(image.dataobj, dtype=np.float32), 0)
    return _crop(data, mask, image.affine, margin_mm=10.0)


def _crop(brain: np.ndarray, mask: np.ndarray, affine: np.ndarray, margin_mm: float = 8.0
          ) -> tuple[nib.Nifti1Image, nib.Nifti1Image]:
    """Brain and mask cut to the mask's bounding box plus a margin (less for ANTs to smooth and resample)."""
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    margin = np.ceil(margin_mm / zooms).astype(int)
    found = np.argwhere(mask)
    low = np.maximum(found.min(axis=0) - margin, 0)
    high = np.minimum(found.max(axis=0) + margin + 1, mask.shape)
    box = tuple(slice(a, b) for a, b in zip(low, high))
    shifted = affine.copy()
    shifted[:3, 3] = affine[:3, :3] @ low + affine[:3, 3]
    return (nib.Nifti1Image(np.ascontiguousarray(brain[box]), shifted),
            nib.Nifti1Image(mask[box].astype(np.float32), shifted))


def _reused(t1w: T1wInput, template: Template, anat: AnatFiles, timing: dict) -> _Result:
    start = time.perf_counter()
    img = checks.load_t1w(anat.image)
    mask = checks.load_t1w(anat.mask)
    data = np.asarray(resample(img, template.shape, template.affine).dataobj)
    mask_data = np.asarray(resample(mask, template.shape, template.affine).dataobj) >= 0.5
    timing["Resampling"] = time.perf_counter() - start
    meta = {"InputSkullStripped": False,
            "SkullStripping": {"Method": "fMRIPrep/sMRIPrep brain mask (--anat-derivatives)"},
            "BiasFieldCorrection": "as done by fMRIPrep/sMRIPrep",
            "Registration": {"Method": "reused from fMRIPrep/sMRIPrep (--anat-derivatives)",
                             "ReusedImage": str(anat.image), "ReusedMask": str(anat.mask)},
            "Notes": [f"{t1w.key}: registration reused from {anat.image}; no T1w<->template transforms were "
                      "written, so maps cannot be taken back to the native grid"]}
    return _Result(np.where(mask_data, data, 0).astype(np.float32), mask_data, meta, None)


def _copy(source: Path, target: Path) -> None:
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)


def _grid_image(data: np.ndarray, template: Template) -> nib.Nifti1Image:
    return nifti_image(data, template.affine, units=("mm",))


@contextlib.contextmanager
def _job_folder(config: RunConfig, t1w: T1wInput) -> Iterator[Path]:
    """A fresh work folder for one input, also the temporary folder of every library meanwhile; removed after."""
    workdir = config.work_dir / "preprocess" / t1w.key
    shutil.rmtree(workdir, ignore_errors=True)
    tmp = workdir / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    saved = tempfile.tempdir, os.environ.get("TMPDIR")
    tempfile.tempdir, os.environ["TMPDIR"] = str(tmp), str(tmp)
    try:
        yield workdir
    finally:
        tempfile.tempdir = saved[0]
        if saved[1] is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = saved[1]
        shutil.rmtree(workdir, ignore_errors=True)


def _write_transforms(derivs: Derivatives, template: Template, backend: Backend, result: _Result,
                      paths: OutputPaths, sources: list[str]) -> dict | None:
    """Copy the forward and inverse transforms to the outputs with their sidecars; their URIs (None if reused)."""
    if result.registration is None:
        return None
    _copy(result.registration.forward, paths.forward)
    _copy(result.registration.inverse, paths.inverse)
    for path, direction in ((paths.forward, "T1w to template"), (paths.inverse, "template to T1w")):
        write_json(sidecar_path(path), {
            "Sources": sources, "Type": backend.transform_type, "Direction": direction,
            "FromSpace": "T1w" if path == paths.forward else template.space,
            "ToSpace": template.space if path == paths.forward else "T1w",
            "Registration": result.meta["Registration"], "Software": software_versions()})
    return {"Forward": derivs.source_uri(paths.forward), "Inverse": derivs.source_uri(paths.inverse)}


def _write_maps(derivs: Derivatives, t1w: T1wInput, template: Template, result: _Result, paths: OutputPaths,
                sources: list[str]) -> None:
    """Write the brain mask and, after a deformable registration, the log Jacobian, with their sidecars."""
    derivs.write_image(paths.mask, _grid_image(result.mask.astype(np.uint8), template),
                       {"Sources": sources, "Type": "Brain", "Space": template.space,
                        "Resolution": template.res_description, "RawSources": [derivs.source_uri(t1w.path)]})
    if result.logjacobian is not None:
        derivs.write_image(paths.logjacobian, _grid_image(result.logjacobian, template), {
            "Sources": [derivs.source_uri(paths.forward)], "SkullStripped": True, "Space": template.space,
            "Resolution": template.res_description, "Units": "natural log of a volume ratio",
            "Description": "log Jacobian determinant of the T1w-to-template deformation minus the log "
                           "determinant of its global affine part, inside the template brain mask (0 outside): "
                           "below 0 where the subject has less tissue than the template relative to its "
                           "whole brain", **result.meta["LogJacobian"]})


def _write_outputs(config: RunConfig, derivs: Derivatives, t1w: T1wInput, template: Template, result: _Result,
                   anat: AnatFiles | None, started: float, timing: dict) -> dict:
    """Normalise intensities, score the registration and write every output, the preprocessed T1w last."""
    template_data = np.asarray(template.t1w.dataobj, dtype=np.float32)
    template_mask = template.mask_array()
    score = qc.ncc(result.warped, template_data, template_mask)
    overlap = qc.dice(result.mask, template_mask)
    data = intensity.normalise(result.warped, result.mask, config.preprocessing.intensity_norm, template_data,
                               template_mask)
    backend = BACKENDS[config.preprocessing.registration]
    paths = output_paths(derivs, t1w, template, backend.name)
    figure = plotting.registration_svg(
        result.warped, template_data, template_mask, f"{t1w.key}: registered T1w, template brain outline (red) and "
        f"mid-intensity contour (yellow); NCC {score:.3f}, brain-mask Dice {overlap:.3f}")
    sources = [derivs.source_uri(anat.image if anat else t1w.path)] + ([derivs.source_uri(anat.mask)] if anat else [])
    transforms = _write_transforms(derivs, template, backend, result, paths, sources)
    _write_maps(derivs, t1w, template, result, paths, sources)
    write_text(paths.figure, figure)
    seconds = time.perf_counter() - started
    sidecar = {
        "Sources": sources + [derivs.source_uri(paths.mask)], "SkullStripped": True,
        **result.meta, "Transforms": transforms, "RegistrationNCC": round(score, 4),
        "BrainMaskDice": round(overlap, 4),
        "InputHash": input_hash(t1w, anat), **settings(config, template), "Template": template.describe(),
        "Threads": int(os.environ.get("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "0")) or None,
        "Software": software_versions(), "WallTimeSeconds": round(seconds, 2),
        "StepSeconds": {k: round(v, 2) for k, v in timing.items()},
        "QCFigure": derivs.source_uri(paths.figure),
    }
    derivs.write_image(paths.image, _grid_image(data, template), sidecar)
    return {"key": t1w.key, "ncc": score, "dice": overlap, "seconds": seconds, "notes": result.meta["Notes"]}


def process(config: RunConfig, derivs: Derivatives, t1w: T1wInput, template: Template,
            anat: AnatFiles | None = None) -> dict:
    """Preprocess one input and write its outputs.

    Parameters
    ----------
    config : RunConfig
        The run configuration.
    derivs : Derivatives
        The output dataset.
    t1w : T1wInput
        The input scan.
    template : Template
        The analysis template.
    anat : AnatFiles, optional
        Reused fMRIPrep outputs (``--anat-derivatives``).

    Returns
    -------
    dict
        ``key``, ``ncc``, ``dice`` (brain-mask overlap), ``seconds`` and ``notes`` (messages for the log).
    """
    started = time.perf_counter()
    timing: dict[str, float] = {}
    with _job_folder(config, t1w) as workdir:
        result = (_reused(t1w, template, anat, timing) if anat else
                  _native(config, t1w, template, workdir, timing))
        return _write_outputs(config, derivs, t1w, template, result, anat, started, timing)
