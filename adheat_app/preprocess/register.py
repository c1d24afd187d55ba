"""Bias-field correction, registration to the template and transform files, with antspyx.

Registration is brain to brain: the skull-stripped, N4-corrected T1w (moving)
to the skull-stripped template (fixed), in one antsRegistration call (ANTs'
library as antspyx ships it) of explicit stages, each starting from the one
before: rigid from the centres of mass (:data:`RIGID`), affine
(:data:`AFFINE`), then symmetric normalisation in two stages, large steps on
the coarse levels (:data:`SYN`) and smaller steps on the fixed grid itself
(:data:`SYN_FINE`); Mattes mutual information throughout; ``--registration
affine`` stops after the affine stage. The command run is recorded in the
sidecar. The fixed image is the template on a grid no finer than
:data:`REGISTRATION_MM` cut to its brain's bounding box: the deformation is
smooth on that scale, and the cost of SyN grows with the fixed grid, so a 1 mm
analysis registers at 2 mm and resamples the 1 mm output through the same
transform. :func:`jacobian` gives the determinant of the result for QC (a
folding deformation can fit any image: NCC alone does not show it).

The quality and time of these stages, and the alternatives that were measured
and rejected, are in ``docs/performance.md``. The result is saved as two ANTs
composite HDF5 transforms (forward: T1w -> template, for images; inverse:
template -> T1w), so template-space maps can be brought back to the native
grid (:func:`apply_transform`).

Determinism: ANTs' sampling is seeded with ``--seed`` (``--random-seed``);
with one thread per job (``--omp-nthreads 1``) a rerun gives bit-identical
arrays. ANTs threads are set through ``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS``
by the job before antspyx is imported.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from adheat_app.io import nifti_image


@dataclass(frozen=True)
class Stage:
    """One stage of the antsRegistration call (Mattes mutual information, 32 bins, every stage).

    Attributes
    ----------
    name : str
        Label in the sidecar.
    transform : str
        antsRegistration ``--transform`` (with its gradient step and, for SyN,
        the update and total field smoothing in voxels).
    sampling : str
        Metric sampling after the bins: ``"Regular,0.25"`` (a quarter of the
        voxels, seeded) or ``""`` (dense).
    iterations, shrink, smoothing : tuple
        Per level, coarse to fine (smoothing sigmas in voxels).
    convergence : str
        Threshold and window of ``--convergence``.
    """

    name: str
    transform: str
    sampling: str
    iterations: tuple[int, ...]
    shrink: tuple[int, ...]
    smoothing: tuple[float, ...]
    convergence: str

    def arguments(self, fixed: str, moving: str) -> list[str]:
        """This stage's antsRegistration arguments for the images ``fixed`` and ``moving`` (file paths)."""
        sampling = f",{self.sampling}" if self.sampling else ""
        return ["--transform", self.transform, "--metric", f"MI[{fixed},{moving},1,32{sampling}]",
                "--convergence", f"[{_levels(self.iterations)},{self.convergence}]",
                "--shrink-factors", _levels(self.shrink), "--smoothing-sigmas", f"{_levels(self.smoothing)}vox"]

    def describe(self) -> dict:
        """The stage for the sidecar."""
        return {"Transform": self.transform, "Metric": f"MI[1,32{',' + self.sampling if self.sampling else ''}]",
                "Iterations": list(self.iterations), "ShrinkFactors": list(self.shrink),
                "SmoothingSigmasVoxels": list(self.smoothing), "Convergence": self.convergence}


def _levels(values: tuple) -> str:
    return "x".join(f"{v:g}" for v in values)


#: Rigid, from the centres of mass (coarse levels: it only has to bring the brains into the affine basin).
RIGID = Stage("Rigid", "Rigid[0.1]", "Regular,0.25", (200, 100), (4, 2), (2, 1), "1e-6,10")
#: Affine (coarse levels: a full-resolution level took 7-13 s on the real heads and changed their NCC by <= 0.004).
AFFINE = Stage("Affine", "Affine[0.1]", "Regular,0.25", (200, 100), (4, 2), (2, 1), "1e-6,10")
#: SyN on the coarse levels, large steps (the large deformations of real heads).
SYN = Stage("SyN", "SyN[0.7,2,0]", "", (60, 40, 0), (4, 2, 1), (2, 1, 0), "1e-7,8")
#: SyN on the fixed grid itself, smaller steps (0.7 there lowered the simulated scans' NCC from 0.96 to 0.945).
SYN_FINE = Stage("SyNFine", "SyN[0.5,2,0]", "", (20,), (1,), (0,), "1e-7,8")
#: Stages run per ``--registration`` choice.
STAGES: dict[str, tuple[Stage, ...]] = {"syn": (RIGID, AFFINE, SYN, SYN_FINE), "affine": (RIGID, AFFINE)}
#: Finest grid (mm) registration runs on; finer analysis grids reuse its transform.
REGISTRATION_MM = 2.0
#: Smallest Jacobian determinant taken into a log (a folded voxel's determinant is at or below 0).
MIN_DETERMINANT = 1e-3
#: Interpolation names accepted by :func:`apply_transform`, mapped to ANTs interpolators.
INTERPOLATORS = {"linear": "linear", "nearest": "nearestNeighbor", "label": "genericLabel",
                 "bspline": "bSpline"}


@dataclass(frozen=True)
class Registration:
    """The result of one registration.

    Attributes
    ----------
    forward, inverse : Path
        Composite transforms T1w -> template and template -> T1w (temporary files).
    settings : dict
        What was run (for the sidecar).
    """

    forward: Path
    inverse: Path
    settings: dict


def to_ants(img: nib.Nifti1Image):
    """A float32 ANTs image from a 3D NIfTI image (world coordinates kept)."""
    import ants

    return ants.from_nibabel_nifti(to_nifti_float(img))


def to_nifti(image, reference: nib.Nifti1Image) -> nib.Nifti1Image:
    """The array of an ANTs image on ``reference``'s grid as a float32 NIfTI image."""
    return nifti_image(image.numpy().astype(np.float32), reference.affine, code=1)


def n4(img: nib.Nifti1Image, mask: np.ndarray | None = None) -> nib.Nifti1Image:
    """N4 bias-field correction (Tustison et al. 2010) inside ``mask`` (default: ANTs' foreground mask)."""
    import ants

    image = to_ants(img)
    weight = ants.get_mask(image) if mask is None else to_ants(nib.Nifti1Image(mask.astype(np.float32), img.affine))
    corrected = ants.n4_bias_field_correction(image, mask=weight, shrink_factor=4,
                                              convergence={"iters": [50, 50, 30], "tol": 1e-6})
    return to_nifti(corrected, img)


def register(moving: nib.Nifti1Image, fixed: nib.Nifti1Image, method: str, seed: int, workdir: Path
             ) -> Registration:
    """Register ``moving`` (native brain) to ``fixed`` (template brain) in one antsRegistration call.

    Parameters
    ----------
    moving, fixed : nibabel.Nifti1Image
        Skull-stripped images.
    method : {"syn", "affine"}
        ``--registration``.
    seed : int
        ANTs random seed.
    workdir : Path
        Folder for the images handed to ANTs and the transform files (under the
        run's work folder).
    """
    from ants import lib  # the compiled ANTs programs (antspyx's own registration calls the same function)

    workdir.mkdir(parents=True, exist_ok=True)
    fixed_path, moving_path = workdir / "fixed.nii", workdir / "moving.nii"
    nib.save(to_nifti_float(fixed), fixed_path)
    nib.save(to_nifti_float(moving), moving_path)
    prefix = workdir / "registration_"
    arguments = ["--dimensionality", "3", "--float", "1", "--collapse-output-transforms", "1",
                 "--write-composite-transform", "1", "--random-seed", str(int(seed)),
                 "--initial-moving-transform", f"[{fixed_path},{moving_path},1]", "--output", str(prefix)]
    for stage in STAGES[method]:
        arguments += stage.arguments(str(fixed_path), str(moving_path))
    status = lib.antsRegistration(arguments)
    if status != 0:
        raise RuntimeError(f"antsRegistration failed (exit status {status}) registering {moving_path}")
    zooms = np.sqrt((fixed.affine[:3, :3] ** 2).sum(axis=0))
    command = " ".join(arguments).replace(str(workdir) + "/", "")
    return Registration(Path(f"{prefix}Composite.h5"), Path(f"{prefix}InverseComposite.h5"),
                        {"Method": method, "Initialization": "centres of mass", "Seed": int(seed),
                         "Metric": "Mattes mutual information", "FixedGridMM": [round(float(z), 3) for z in zooms],
                         "Stages": {stage.name: stage.describe() for stage in STAGES[method]},
                         "Command": f"antsRegistration {command}"})


def to_nifti_float(img: nib.Nifti1Image) -> nib.Nifti1Image:
    """``img`` as a float32 NIfTI image with qform and sform set (what ANTs reads)."""
    return nifti_image(np.asarray(img.dataobj, dtype=np.float32), img.affine, code=1, units=("mm", "sec"))


def identity(workdir: Path) -> Registration:
    """Identity transforms (for an input that is already in template space)."""
    import ants

    workdir.mkdir(parents=True, exist_ok=True)
    forward, inverse = workdir / "identity.h5", workdir / "identity_inverse.h5"
    ants.write_transform(ants.create_ants_transform(transform_type="AffineTransform", dimension=3), str(forward))
    shutil.copyfile(forward, inverse)
    return Registration(forward, inverse, {"Method": "none (input already in template space)"})


def _composed_field(transform: Path, reference: nib.Nifti1Image, workdir: Path):
    """``transform`` (affine and deformation) composed into one displacement field on ``reference``'s grid.

    Returns the ANTs grid image and the field's file (antsApplyTransforms' compose mode).
    """
    import ants

    workdir.mkdir(parents=True, exist_ok=True)
    grid = to_ants(nib.Nifti1Image(np.zeros(reference.shape[:3], np.float32), reference.affine))
    return grid, ants.apply_transforms(grid, grid, [str(transform)], compose=str(workdir / "jacobian_"))


def jacobian(transform: Path, reference: nib.Nifti1Image, workdir: Path) -> np.ndarray:
    """Jacobian determinant of ``transform`` on ``reference``'s grid (at or below 0 where it folds).

    The transform is composed into one displacement field on the grid, whose
    determinant ANTs computes. A diffeomorphic SyN result is positive
    everywhere; the value is the volume of the T1w region a template voxel
    maps to over the voxel's own volume (below 1 where the subject's tissue is
    smaller than the template's).
    """
    import ants

    grid, field = _composed_field(transform, reference, workdir)
    return ants.create_jacobian_determinant_image(grid, field).numpy()


def log_jacobian(transform: Path, reference: nib.Nifti1Image, mask: np.ndarray, workdir: Path
                 ) -> tuple[np.ndarray, dict]:
    """Log Jacobian determinant of ``transform``'s deformation beyond its global linear part, 0 outside ``mask``.

    The tensor-based-morphometry map (Ashburner & Friston 2000; Hua et al.
    2008 removed global scale by a 9-parameter affine registration first):
    the transform is composed into one displacement field ``u`` on
    ``reference``'s grid, the point map ``x -> x + u(x)`` is fitted over the
    ``mask`` voxels by the affine map ``M x + t`` (least squares), and the
    result is ``log det J(x) - log |det M|``: negative where the subject has
    less tissue than the template *relative to its whole brain*, so head size
    does not enter it. Determinants at or below 0 (a folded deformation) are
    clipped to :data:`MIN_DETERMINANT` before the log.

    Returns
    -------
    numpy.ndarray
        float32 map on ``reference``'s grid.
    dict
        ``GlobalLogDeterminant`` (``log |det M|``), ``FoldedVoxels`` (in ``mask``) and the method, for the sidecar.
    """
    import ants

    grid, field = _composed_field(transform, reference, workdir)
    determinant = ants.create_jacobian_determinant_image(grid, field).numpy()
    displacement = ants.image_read(field).numpy()
    index = np.argwhere(mask)
    points = (np.asarray(grid.direction) @ (index * np.asarray(grid.spacing)).T).T + np.asarray(grid.origin)
    mapped = points + displacement[mask]
    design = np.hstack([points, np.ones((len(points), 1))])
    coefficients, *_ = np.linalg.lstsq(design, mapped, rcond=None)
    global_log = float(np.log(abs(np.linalg.det(coefficients[:3]))))
    inside = determinant[mask]
    out = np.zeros(mask.shape, np.float32)
    out[mask] = np.log(np.maximum(inside, MIN_DETERMINANT)) - global_log
    return out, {"GlobalLogDeterminant": round(global_log, 6), "FoldedVoxels": int(np.sum(inside <= 0)),
                 "Method": "log det J of the composed transform minus log |det M| of its least-squares affine "
                           "fit inside the template brain mask"}


def apply_transform(img: nib.Nifti1Image, reference: nib.Nifti1Image, transform: Path,
                    interpolation: str = "linear") -> nib.Nifti1Image:
    """Resample ``img`` onto ``reference``'s grid through an ANTs transform file.

    Parameters
    ----------
    img : nibabel.Nifti1Image
        Image in the transform's source space.
    reference : nibabel.Nifti1Image
        Grid of the output (its world space is the transform's target).
    transform : Path
        ANTs transform (composite ``.h5``, affine ``.mat`` or warp field).
    interpolation : {"linear", "nearest", "label", "bspline"}
        Interpolation of ``img``.
    """
    import ants

    if interpolation not in INTERPOLATORS:
        raise ValueError(f"interpolation must be one of {sorted(INTERPOLATORS)}, got {interpolation!r}")
    ref = to_ants(nib.Nifti1Image(np.zeros(reference.shape[:3], np.float32), reference.affine))
    out = ants.apply_transforms(ref, to_ants(img), [str(transform)], interpolator=INTERPOLATORS[interpolation])
    return to_nifti(out, reference)
