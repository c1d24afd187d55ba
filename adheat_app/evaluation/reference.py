"""Reference maps of Alzheimer's-disease atrophy: the :class:`Reference` type and the map readers.

Where the maps come from is the reference kinds' business
(:mod:`adheat_app.evaluation.references`: the simulated truth, the cohort's own
test, an ALE of foci, the user's NIfTI, the built-in region prior). This module
holds what they share: :class:`Reference`, :func:`load_map` (a NIfTI in MNI
space onto the analysis grid, with its threshold, and its coverage logged;
:func:`read_map` without the log),
the built-in map's path and :func:`ale_map`, which placed the built-in prior's
foci (``adheat_app/data/make_reference_map.py``).

ALE (Eickhoff et al. 2009, 2012; Turkeltaub et al. 2012): each focus becomes
a 3D Gaussian probability distribution whose FWHM combines between-template
(5.7 mm) and between-subject (11.6 mm / sqrt(N)) uncertainty for an experiment
of ``N`` subjects; an experiment's modelled activation (MA) map is the voxel-wise
maximum over its foci; ALE = 1 - prod over experiments of (1 - MA).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from adheat_app.errors import InputError
from adheat_app.io import read_json
from adheat_app.layout import BUILTIN_REFERENCE_MAP, sidecar_path
from adheat_app.templates import Template, resample

LOGGER = logging.getLogger(__name__)

DATA_DIR = Path(__file__).resolve().parents[1] / "data"
#: Spatial uncertainty of ALE (Eickhoff et al. 2009), as FWHM in mm.
TEMPLATE_FWHM_MM = 5.7
SUBJECT_FWHM_MM = 11.6


@dataclass(frozen=True, eq=False)
class Reference:
    """A reference map on the analysis grid.

    Attributes
    ----------
    name : str
        Short name used in tables (one of its reference kind's ``names``).
    values : numpy.ndarray
        Continuous map on the analysis grid (float32, 0 outside the brain).
    threshold : float
        Voxels with ``values > threshold`` form the binary reference.
    description : str
        How the map was made (for sidecars and the report).
    source : str
        File it was read from.
    mask : numpy.ndarray or None
        Binary reference given explicitly (e.g. the clusters surviving a
        cluster-level correction); None: ``values > threshold``.
    uninformative : str
        Why the reference is reported but not scored (empty: it is scored).
    """

    name: str
    values: np.ndarray
    threshold: float
    description: str
    source: str
    mask: np.ndarray | None = None
    uninformative: str = ""

    def binary(self) -> np.ndarray:
        """The binarised reference (bool, analysis grid)."""
        return self.mask if self.mask is not None else self.values > self.threshold

    def describe(self) -> dict:
        """JSON-serialisable summary for sidecars."""
        return {"Name": self.name, "Source": self.source, "Threshold": self.threshold,
                "Voxels": int(self.binary().sum()), "Description": self.description,
                **({"Uninformative": self.uninformative} if self.uninformative else {})}


def ale_fwhm(sample_size: float) -> float:
    """FWHM (mm) of the ALE kernel of an experiment with ``sample_size`` subjects (Eickhoff et al. 2009)."""
    scale = np.sqrt(8.0 * np.log(2.0)) / (2.0 * np.sqrt(2.0 / np.pi))
    template = TEMPLATE_FWHM_MM * scale
    subjects = SUBJECT_FWHM_MM * scale / np.sqrt(sample_size)
    return float(np.sqrt(template**2 + subjects**2))


def _world_grid(shape: Sequence[int], affine: np.ndarray) -> np.ndarray:
    index = np.indices(shape, dtype=np.float64).reshape(3, -1)
    return (affine[:3, :3] @ index + affine[:3, 3:]).T.reshape(*shape, 3)


def ale_map(experiments: Sequence[tuple[np.ndarray, float]], shape: Sequence[int],
            affine: np.ndarray) -> np.ndarray:
    """Activation likelihood estimation map of coordinate-based experiments.

    Parameters
    ----------
    experiments : sequence of (foci, sample_size)
        ``foci`` is a ``(k, 3)`` array of world coordinates (mm); each is moved
        to its nearest voxel centre, as in GingerALE.
    shape, affine
        Output grid.

    Returns
    -------
    numpy.ndarray
        ALE values in [0, 1) (float64). Each focus's kernel is a Gaussian
        normalised to sum 1 over the grid, so MA values are probabilities per voxel.
    """
    points = _world_grid(shape, affine)
    inverse = np.linalg.inv(affine)
    product = np.ones(tuple(shape))
    for foci, sample_size in experiments:
        sigma = ale_fwhm(sample_size) / np.sqrt(8.0 * np.log(2.0))
        modelled = np.zeros(tuple(shape))
        for focus in np.atleast_2d(np.asarray(foci, dtype=float)):
            voxel = np.rint(inverse[:3, :3] @ focus + inverse[:3, 3])
            centre = affine[:3, :3] @ voxel + affine[:3, 3]
            kernel = np.exp(-np.sum((points - centre) ** 2, axis=-1) / (2.0 * sigma**2))
            np.maximum(modelled, kernel / kernel.sum(), out=modelled)
        product *= 1.0 - modelled
    return 1.0 - product


def builtin_reference_path() -> Path:
    """Path of the built-in AD atrophy reference map shipped with adheat."""
    return DATA_DIR / BUILTIN_REFERENCE_MAP


def _sidecar(path: Path) -> dict:
    side = sidecar_path(path)
    return read_json(side) if side.is_file() else {}


def load_map(path: Path, template: Template, name: str, threshold: float | None, option: str) -> Reference:
    """Read a reference NIfTI, resample it to the analysis grid, pick its threshold and log its coverage.

    Raises
    ------
    InputError
        When the file is missing, not a NIfTI image or not 3D.
    """
    reference = read_map(path, template, name, threshold, option)
    check_coverage(reference, int(template.mask_array().sum()))
    return reference


def read_map(path: Path, template: Template, name: str, threshold: float | None, option: str) -> Reference:
    """:func:`load_map` without logging the coverage (for many maps at once, such as each subject's truth)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{option} {path}: file not found; pass a NIfTI map in MNI space")
    try:
        img = nib.load(path)
    except Exception as exc:  # nibabel raises several types for unreadable files
        raise InputError(f"{option} {path}: not a readable NIfTI image ({exc})") from exc
    if len(img.shape) > 3 and any(n > 1 for n in img.shape[3:]):
        raise InputError(f"{option} {path}: a 3D map is needed, got shape {img.shape}")
    if len(img.shape) > 3:
        img = nib.Nifti1Image(np.asarray(img.dataobj).reshape(img.shape[:3]), img.affine)
    data = np.nan_to_num(np.asarray(img.dataobj, dtype=np.float32))
    img = nib.Nifti1Image(data, img.affine)
    values = np.asarray(resample(img, template.shape, template.affine).dataobj, dtype=np.float32)
    values = values * template.mask_array()
    sidecar = _sidecar(path)
    if threshold is None:
        threshold = float(sidecar.get("Threshold", 0.0))
    description = str(sidecar.get("Description", f"user-supplied map {path.name}"))
    return Reference(name, values, float(threshold), description, str(path))


def check_coverage(ref: Reference, brain: int) -> None:
    """Log a reference's size; warn when it is empty or covers more than half of the ``brain`` voxels."""
    voxels = int(ref.binary().sum())
    LOGGER.info("reference map %s: %d voxels above %g (%s)", ref.name, voxels, ref.threshold, ref.source)
    if voxels == 0 or voxels > brain / 2:
        LOGGER.warning("reference map %s covers %.0f %% of the brain at threshold %g: overlap scores are not "
                       "informative; set --reference-threshold", ref.name, 100 * voxels / brain, ref.threshold)
