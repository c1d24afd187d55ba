"""What every registration backend provides: the :class:`Backend` base class and the check run at registration.

A backend registers a (skull-stripped, N4-corrected) T1w brain to the template
brain and writes two transform files, forward (T1w -> template, for images)
and inverse (template -> T1w), in a format the backend can read back. The
pipeline (:mod:`adheat_app.preprocess.pipeline`) only talks to this interface:
it resamples the scan and its brain mask through the forward transform, maps
template-space maps back to the native grid through the inverse one
(``--native-space``), and, for a deformable backend, writes the log Jacobian
determinant of the forward transform beyond its global affine part on the
analysis grid.

Both built-in backends write ITK transform files (an ANTs composite ``.h5``,
or a displacement field ``.nii.gz``), which antsApplyTransforms reads; the
default :meth:`Backend.apply`, :meth:`Backend.jacobian` and
:meth:`Backend.log_jacobian` therefore use ANTs' resampler and Jacobian
(:mod:`adheat_app.preprocess.register`). A backend with another transform
format overrides them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import nibabel as nib
import numpy as np

from adheat_app.preprocess import register

if TYPE_CHECKING:
    from adheat_app.config import RunConfig


#: ``Registration.Method`` of an input already in template space (no registration run).
SKIPPED = "none (input already in template space)"


@dataclass(frozen=True)
class Registration:
    """The result of one registration.

    Attributes
    ----------
    forward, inverse : Path
        Transform files T1w -> template and template -> T1w (temporary files, copied to the outputs).
    settings : dict
        What was run (the sidecars' ``Registration``); ``Method`` is the backend's name.
    """

    forward: Path
    inverse: Path
    settings: dict


class Backend:
    """A registration backend, registered in :data:`~adheat_app.preprocess.backends.BACKENDS` under :attr:`name`.

    Attributes
    ----------
    name : str
        The ``--registration`` value.
    summary : str
        One line for ``--help`` and README's table.
    deformable : bool
        Whether the transform is non-linear: the log Jacobian (``--input logjacobian``) is written only then.
    requires : tuple of str
        Python packages it imports when it runs (checked before anything is written).
    transform_extension : str
        Extension of the transform files it writes (``".h5"``, ``".nii.gz"``).
    transform_type : str
        What the transform files are (their sidecars' ``Type``).
    """

    name: str = ""
    summary: str = ""
    deformable: bool = False
    requires: tuple[str, ...] = ()
    transform_extension: str = ""
    transform_type: str = ""

    def register(self, moving: nib.Nifti1Image, fixed: nib.Nifti1Image, config: RunConfig, workdir: Path
                 ) -> Registration:
        """Register ``moving`` (native brain) to ``fixed`` (template brain).

        Parameters
        ----------
        moving, fixed : nibabel.Nifti1Image
            Skull-stripped images (``fixed``: the template on a grid no finer than
            :data:`~adheat_app.preprocess.register.REGISTRATION_MM`, cut to its brain's box).
        config : RunConfig
            The seed (``--seed``) and the device (``--device``).
        workdir : Path
            Folder (under the run's work folder) for the images handed to the library and the transform files.
        """
        raise NotImplementedError

    def identity(self, workdir: Path) -> Registration:
        """Identity transforms (an input already in template space): ANTs affine transforms by default."""
        return Registration(*register.identity_transforms(workdir), {"Method": SKIPPED})

    def methods_text(self, versions: dict[str, str]) -> str:
        """The registration clause of the methods text (with its ``[@key]`` citations), given software versions."""
        raise NotImplementedError

    def reads(self, transform: Path) -> bool:
        """Whether ``transform`` is a file of this backend's format."""
        return transform.name.endswith(self.transform_extension)

    def apply(self, img: nib.Nifti1Image, reference: nib.Nifti1Image, transform: Path,
              interpolation: str = "linear") -> nib.Nifti1Image:
        """Resample ``img`` onto ``reference``'s grid through ``transform`` (forward or inverse file).

        ``interpolation`` is one of :data:`~adheat_app.preprocess.register.INTERPOLATORS`: ``"nearest"`` or
        ``"label"`` for label images.
        """
        return register.apply_transform(img, reference, transform, interpolation)

    def jacobian(self, transform: Path, reference: nib.Nifti1Image, workdir: Path) -> np.ndarray:
        """Jacobian determinant of ``transform`` on ``reference``'s grid (at or below 0 where it folds)."""
        return register.jacobian(transform, reference, workdir)

    def log_jacobian(self, transform: Path, reference: nib.Nifti1Image, mask: np.ndarray, workdir: Path
                     ) -> tuple[np.ndarray, dict]:
        """Log Jacobian determinant beyond the global affine part inside ``mask`` (0 outside), and its sidecar."""
        return register.log_jacobian(transform, reference, mask, workdir)


#: What every backend must define (class attributes) and implement (methods).
REQUIRED_ATTRIBUTES = ("summary", "transform_extension", "transform_type")
REQUIRED_METHODS = ("register", "methods_text")


def check_backend(name: str, backend: Backend) -> None:
    """Raise ``TypeError`` naming every broken rule when ``backend`` does not honour the contract."""
    problems = []
    if not isinstance(backend, Backend):
        raise TypeError(f"registration backend {name!r} must be a Backend instance, got {type(backend).__name__}")
    if backend.name != name:
        problems.append(f"its name is {backend.name!r}, not the registered {name!r}")
    problems += [f"{attribute} is empty" for attribute in REQUIRED_ATTRIBUTES if not getattr(backend, attribute)]
    problems += [f"{method}() is not implemented" for method in REQUIRED_METHODS
                 if getattr(type(backend), method) is getattr(Backend, method)]
    if not backend.transform_extension.startswith("."):
        problems.append(f"transform_extension {backend.transform_extension!r} must start with '.'")
    if problems:
        raise TypeError(f"registration backend {name!r} breaks the contract: {'; '.join(problems)}")
