"""FireANTs backend (``--registration fireants``): affine then greedy diffeomorphic registration in torch.

FireANTs (Jena, Chaudhari & Gee 2024) optimises the transform with Riemannian
Adam on the GPU (CUDA with ``--device auto|cuda`` where one is available, else
the CPU). Like the ANTs backends it registers brain to brain: the centres of
mass are matched (first moments), an affine transform is fitted, then a greedy
compositive diffeomorphism, both with local normalised cross-correlation
(:data:`CC_KERNEL` voxels), coarse to fine on the levels of :data:`LEVELS_MM`
that are no finer than the fixed grid.

The result is saved in ANTs' format, so every tool that reads ANTs transforms
reads it: FireANTs' displacement field ``D`` (affine included) is split into
its affine part ``P`` and a deformation ``w`` before it, ``x -> P(x + w(x))``
with ``w = L(P)^-1 (x + D(x) - P(x))``, and written as an ANTs composite
transform (``.h5``). The inverse is ``P^-1`` followed by the inverse of ``w``,
inverted by ITK's fixed-point displacement-field inversion on the fixed grid.
Outside the fixed grid the deformation is 0 and the affine part still holds,
as for the ANTs backends, so maps taken back to a whole-head native grid stay
in place.

Determinism: ``--seed`` seeds torch; on the CPU with a fixed thread count a
rerun gives identical arrays. CUDA's atomic additions may change the last
digits between runs.

FireANTs is distributed under the FireANTs License 1.0 (a modified Apache
2.0 licence: use as an installed dependency is free; redistribution only as the
original repository, PyPI wheels or forks that keep its notices; its papers
must be cited): README.md, "Registration".
"""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path

import nibabel as nib
import numpy as np

from adheat_app.config import RunConfig
from adheat_app.preprocess.backends import BACKENDS
from adheat_app.preprocess.backends._contract import Backend, Registration
from adheat_app.preprocess.register import save_pair

#: Voxel sizes (mm) of the multi-resolution levels, coarse to fine; levels finer than the fixed grid are dropped.
LEVELS_MM = (8.0, 4.0, 2.0)
#: Iterations of the affine and of the deformable stage per level of :data:`LEVELS_MM`.
AFFINE_ITERATIONS, GREEDY_ITERATIONS = (100, 50, 25), (200, 100, 50)
#: Side (voxels) of the local cross-correlation window.
CC_KERNEL = 5
#: Learning rates of the affine and deformable stages, and the smoothing (voxels) of the update and of the warp.
AFFINE_LR, GREEDY_LR, GRAD_SIGMA, WARP_SIGMA = 3e-3, 1.0, 1.0, 0.5


def _levels(fixed: nib.Nifti1Image) -> tuple[list[float], list[int], list[int]]:
    """Down-sampling factors of the fixed grid, and the affine and deformable iterations, per level."""
    grid_mm = float(np.sqrt((fixed.affine[:3, :3] ** 2).sum(axis=0)).max())
    kept = [i for i, mm in enumerate(LEVELS_MM) if mm >= grid_mm - 1e-6] or [len(LEVELS_MM) - 1]
    return ([max(LEVELS_MM[i] / grid_mm, 1.0) for i in kept], [AFFINE_ITERATIONS[i] for i in kept],
            [GREEDY_ITERATIONS[i] for i in kept])


def _fireants():
    """FireANTs' image and registration classes (imported quietly: the package prints on import)."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        from fireants.io.image import BatchedImages, Image
        from fireants.registration.affine import AffineRegistration
        from fireants.registration.greedy import GreedyRegistration
        from fireants.registration.moments import MomentsRegistration
    logging.getLogger("fireants").setLevel(logging.ERROR)
    return BatchedImages, Image, MomentsRegistration, AffineRegistration, GreedyRegistration


def _device(config: RunConfig) -> str:
    """``--device`` resolved to a torch device name (``auto``: CUDA when available)."""
    from adheat_app.training.device import resolve_device

    return str(resolve_device(config))


def _ants_pair(field_path: Path, affine: np.ndarray, workdir: Path) -> tuple[Path, Path]:
    """Forward and inverse ANTs composite transforms from FireANTs' field ``D`` and its physical affine ``P``.

    ``affine`` (4 x 4, ITK's LPS coordinates) maps fixed points to moving
    points; the field holds ``x + D(x)`` minus ``x`` with the affine included.
    """
    import ants

    field = ants.image_read(str(field_path))
    displacement = field.numpy()  # (X, Y, Z, 3), physical mm
    index = np.indices(displacement.shape[:3]).reshape(3, -1).T
    points = (np.asarray(field.direction) @ (index * np.asarray(field.spacing)).T).T + np.asarray(field.origin)
    linear, shift = affine[:3, :3], affine[:3, 3]
    mapped = points + displacement.reshape(-1, 3)
    beyond = np.linalg.solve(linear, (mapped - points @ linear.T - shift).T).T  # w = L^-1 (x + D(x) - P(x))
    warp = ants.from_numpy(beyond.reshape(displacement.shape).astype(np.float32), origin=field.origin,
                           spacing=field.spacing, direction=field.direction, has_components=True)
    inverse_warp = ants.invert_displacement_field(warp, warp * 0, maximum_number_of_iterations=50)
    forward_affine = ants.create_ants_transform(transform_type="AffineTransform", dimension=3,
                                                matrix=linear, translation=shift)
    inverse_linear = np.linalg.inv(linear)
    inverse_affine = ants.create_ants_transform(transform_type="AffineTransform", dimension=3,
                                                matrix=inverse_linear, translation=-inverse_linear @ shift)
    forward, inverse = workdir / "fireants_Composite.h5", workdir / "fireants_InverseComposite.h5"
    ants.write_transform(ants.compose_ants_transforms(  # applied in list order: warp, then affine
        [ants.transform_from_displacement_field(warp), forward_affine]), str(forward))
    ants.write_transform(ants.compose_ants_transforms(
        [inverse_affine, ants.transform_from_displacement_field(inverse_warp)]), str(inverse))
    return forward, inverse


class FireAntsBackend(Backend):
    """FireANTs: moments, affine and greedy deformable stages, saved as ANTs composite transforms."""

    name = "fireants"
    summary = "FireANTs (CUDA when available, else CPU): centres of mass, affine, then greedy diffeomorphic"
    deformable = True
    requires = ("fireants",)
    transform_extension = ".h5"
    transform_type = "ANTs composite transform (HDF5) of a FireANTs registration"

    def register(self, moving: nib.Nifti1Image, fixed: nib.Nifti1Image, config: RunConfig, workdir: Path
                 ) -> Registration:
        """Moments, affine and greedy stages on ``--device``, torch seeded with ``--seed``."""
        import torch

        BatchedImages, Image, Moments, Affine, Greedy = _fireants()
        device, seed = _device(config), int(config.execution.seed)
        torch.manual_seed(seed)
        moving_path, fixed_path = save_pair(moving, fixed, workdir)
        fixed_batch = BatchedImages([Image.load_file(str(fixed_path), device=device)])
        moving_batch = BatchedImages([Image.load_file(str(moving_path), device=device)])
        scales, affine_iterations, greedy_iterations = _levels(fixed)
        common = {"fixed_images": fixed_batch, "moving_images": moving_batch, "loss_type": "cc",
                  "cc_kernel_size": CC_KERNEL, "progress_bar": False}
        moments = Moments(scale=1.0, moments=1, **common)
        moments.optimize()
        affine = Affine(scales, affine_iterations, optimizer="Adam", optimizer_lr=AFFINE_LR,
                        init_rigid=moments.get_affine_init(), **common)
        affine.optimize()
        greedy = Greedy(scales=scales, iterations=greedy_iterations, deformation_type="compositive",
                        optimizer="Adam", optimizer_lr=GREEDY_LR, smooth_grad_sigma=GRAD_SIGMA,
                        smooth_warp_sigma=WARP_SIGMA, init_affine=affine.get_affine_matrix().detach(), **common)
        greedy.optimize()
        field = workdir / "fireants_field.nii.gz"
        greedy.save_as_ants_transforms([str(field)])
        physical = greedy.affine[0].detach().cpu().double().numpy()
        forward, inverse = _ants_pair(field, physical, workdir)
        zooms = np.sqrt((fixed.affine[:3, :3] ** 2).sum(axis=0))
        return Registration(forward, inverse, {
            "Method": self.name, "Software": "FireANTs (fireants on PyPI)", "Device": device, "Seed": seed,
            "Initialization": "centres of mass (first moments)", "Metric": f"local NCC, {CC_KERNEL}-voxel window",
            "FixedGridMM": [round(float(z), 3) for z in zooms], "ScaleFactors": scales,
            "Stages": {"Affine": {"Iterations": affine_iterations, "Optimizer": "Adam", "LearningRate": AFFINE_LR},
                       "Greedy": {"Iterations": greedy_iterations, "Optimizer": "Riemannian Adam",
                                  "LearningRate": GREEDY_LR, "Deformation": "compositive",
                                  "GradientSmoothingVoxels": GRAD_SIGMA, "WarpSmoothingVoxels": WARP_SIGMA}},
            "Inverse": "affine inverse, then the deformation inverted by ITK's fixed-point iteration"})

    def methods_text(self, versions: dict[str, str]) -> str:
        """The registration clause of the methods text."""
        version = f" {versions['fireants']}" if "fireants" in versions else ""
        return (f"affine and greedy diffeomorphic registration in FireANTs{version} (local normalised "
                "cross-correlation, Riemannian Adam; template grid of at least 2 mm) [@jena2024fireants]")


BACKENDS.register("fireants")(FireAntsBackend())
