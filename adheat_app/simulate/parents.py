"""Parent anatomies: the T1w heads simulated subjects are made from, prepared once and cached.

A parent is either the registration target itself (``template``: the analysis
template, as the simulator always used) or a T1w head that is not: a built-in
one that an installed package ships (:data:`BUILTIN`) or any file given with
``--anatomy``, whole head or skull-stripped, in any orientation and data type.
Preparing a file parent:

1. read and check it (readable, 3D, not empty; else :class:`InputError`
   naming the file), reorient it to RAS;
2. brain extraction: an image whose foreground is brain-sized is taken as
   stripped, a whole head goes through deepbet
   (:mod:`adheat_app.preprocess.skullstrip`); a brain outside
   :data:`BRAIN_ML` is "no brain found" (:class:`InputError`);
3. N4 bias correction inside the brain;
4. an affine registration of the brain to the template brain places the
   parent on the analysis grid (its own anatomy, template-aligned only
   linearly), then one SyN registration of that image to the template
   (:func:`adheat_app.preprocess.register.register`, seed 0; on the analysis
   grid, no finer than :data:`PARENT_REGISTRATION_MM`) brings the AAL3
   regions into the parent (label interpolation) and gives, for every
   template voxel, the parent voxel it corresponds to (``to_template``), so
   truth maps made in the parent's anatomy can be written in template space.

The result depends only on the file's bytes, the template and the analysis
grid, and is cached under :func:`cache_dir` (a later run, or another process,
reads it instead of registering again; the cache is what makes reruns
byte-identical, since ANTs with several threads is not bit-reproducible).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np

from adheat_app.errors import InputError
from adheat_app.io import atomic_path, file_lock
from adheat_app.layout import BUILTIN_PARENT_FILES
from adheat_app.simulate.geometry import affine_points
from adheat_app.templates import Template, get_atlas, get_template

#: The registration target itself as a parent (the analysis template; no registration).
TEMPLATE_PARENT = "template"
#: Built-in parents: name -> (where the file comes from, its licence), resolved by :func:`builtin_path`.
BUILTIN = {
    "MNI152NLin6Asym": ("FSL's MNI152 nonlinear 6th generation T1w with skull, 1 mm (TemplateFlow "
                        "tpl-MNI152NLin6Asym_res-01_T1w), as the nimare package ships it",
                        "ICBM/MNI copyright notice (Copyright (C) 1993-2009 Louis Collins, McConnell Brain Imaging "
                        "Centre, Montreal Neurological Institute, McGill University): use, copy and distribute "
                        "with the notice; redistributed by TemplateFlow and nimare (MIT)"),
    "MNI152NLin2009aSym": ("ICBM 2009a nonlinear symmetric T1w brain, 1 mm, as the nilearn package ships it",
                           "ICBM 2009 copyright notice (Copyright (C) 1993-2009 Louis Collins, McConnell Brain "
                           "Imaging Centre): use, copy and distribute with the notice; shipped by nilearn (BSD)"),
}
#: Parents of the default cohort (docs/simulation.md: chosen by measurement).
DEFAULT_ANATOMY: tuple[str, ...] = ("MNI152NLin6Asym",)
#: Brain volumes (ml) accepted from brain extraction; outside them no brain was found.
BRAIN_ML = (700.0, 2400.0)
#: Finest registration grid (mm) of a parent against the template (the participant level's, too); coarser
#: analysis grids register on their own grid.
PARENT_REGISTRATION_MM = 2.0
#: Bumped when the preparation changes, so that cached parents are prepared again.
CACHE_VERSION = "2"


@dataclasses.dataclass(frozen=True, eq=False)
class Parent:
    """A parent head prepared on the analysis grid.

    Attributes
    ----------
    name : str
        Label in ``participants.tsv`` (``anatomy``): a built-in name, ``template`` or the file's stem.
    source : str
        Where it came from (a file path or the built-in's description).
    brain : numpy.ndarray
        The N4-corrected brain on the analysis grid, 0 outside it (float32).
    mask : numpy.ndarray
        Its brain mask (bool).
    labels : numpy.ndarray
        AAL3 labels in the parent's anatomy (int16).
    to_template : numpy.ndarray or None
        Parent voxel coordinates of every template voxel ``(3, *grid)``
        (float32); None for the template itself.
    transforms : tuple of bytes
        The ANTs composite transforms (parent -> template for images, and its
        inverse) as file contents, written with the truth; empty for the template.
    """

    name: str
    source: str
    brain: np.ndarray
    mask: np.ndarray
    labels: np.ndarray
    to_template: np.ndarray | None
    transforms: tuple[bytes, ...] = ()


def cache_dir() -> Path:
    """Folder of prepared parents: ``$ADHEAT_SIMULATE_CACHE``, else ``$XDG_CACHE_HOME/adheat/parents``."""
    if os.environ.get("ADHEAT_SIMULATE_CACHE"):
        return Path(os.environ["ADHEAT_SIMULATE_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "adheat" / "parents"


def builtin_path(name: str) -> Path:
    """The file of a built-in parent, inside the installed package that ships it (not imported)."""
    package, parts = BUILTIN_PARENT_FILES[name]
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise InputError(f"--anatomy {name}: the package {package} that ships it is not installed")
    return Path(spec.origin).parent.joinpath(*parts)


def parent_name(anatomy: str | os.PathLike) -> str:
    """The ``anatomy`` label of a parent: the built-in name, ``template``, or the file name without extensions."""
    text = str(anatomy)
    if text == TEMPLATE_PARENT or text in BUILTIN:
        return text
    name = Path(text).name
    for suffix in (".gz", ".nii", ".mgz", ".mgh"):
        name = name.removesuffix(suffix)
    return "".join(c for c in name if c.isalnum()) or "parent"


def read_head(path: Path) -> nib.Nifti1Image:
    """A T1w file as a 3D float32 RAS image; :class:`InputError` naming the file when it cannot be one."""
    try:
        img = nib.load(path)
        data = np.asarray(img.dataobj, dtype=np.float32)
    except Exception as exc:  # nibabel raises many kinds for unreadable files
        raise InputError(f"--anatomy {path}: cannot read it as an image ({type(exc).__name__}); give a T1w "
                         "NIfTI file") from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise InputError(f"--anatomy {path}: a {data.ndim}D image of shape {data.shape}; give one 3D T1w volume")
    finite = data[np.isfinite(data)]
    if finite.size == 0 or float(finite.max()) <= float(finite.min()):
        raise InputError(f"--anatomy {path}: the image is empty (constant); give a T1w head")
    data = np.where(np.isfinite(data), data, 0).astype(np.float32)
    data -= min(0.0, float(data.min()))
    return nib.as_closest_canonical(nib.Nifti1Image(data, img.affine))


def brain_mask(img: nib.Nifti1Image, path: Path) -> np.ndarray:
    """The brain of a head: its own foreground when already stripped, deepbet's mask otherwise.

    Raises
    ------
    InputError
        When the brain found is outside :data:`BRAIN_ML` (not a head).
    """
    from adheat_app.preprocess.skullstrip import deepbet_mask, is_skull_stripped, stripped_mask

    stripped, _ = is_skull_stripped(img, path, "auto")
    mask = stripped_mask(img) if stripped else deepbet_mask(img)
    volume = float(mask.sum() * np.prod(img.header.get_zooms()[:3]) / 1000.0)
    if not BRAIN_ML[0] <= volume <= BRAIN_ML[1]:
        raise InputError(f"--anatomy {path}: no brain found (brain extraction gave {volume:.0f} ml, expected "
                         f"{BRAIN_ML[0]:.0f}-{BRAIN_ML[1]:.0f} ml); give a T1w head or brain")
    return mask


def _file_key(path: Path, template: Template) -> str:
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:20]
    return f"{digest}_{template.space}_res-{template.res_label}_v{CACHE_VERSION}"


def template_parent(template: Template) -> Parent:
    """The registration target as a parent (its own atlas labels, no transform)."""
    atlas = get_atlas(template.resolution, template.space)
    mask = template.mask_array().astype(bool)
    return Parent(TEMPLATE_PARENT, f"{template.space} template ({template.source})",
                  np.where(mask, np.asarray(template.t1w.dataobj, dtype=np.float32), 0).astype(np.float32), mask,
                  atlas.array().astype(np.int16), None)


def load_parent(anatomy: str | os.PathLike, template: Template) -> Parent:
    """Prepare (or read from the cache) one parent for the analysis grid of ``template``.

    Parameters
    ----------
    anatomy : str or path-like
        ``template``, a :data:`BUILTIN` name or a T1w file.
    template : Template
        The analysis template (the registration target).

    Raises
    ------
    InputError
        A file that does not exist, cannot be read, is not 3D, is empty or holds no brain.
    """
    text = str(anatomy)
    if text == TEMPLATE_PARENT:
        return template_parent(template)
    path = builtin_path(text) if text in BUILTIN else Path(text)
    source = BUILTIN[text][0] if text in BUILTIN else str(path)
    if not path.is_file():
        raise InputError(f"--anatomy {path}: no such file; give T1w NIfTI files, 'template' or one of "
                         f"{', '.join(BUILTIN)}")
    name = parent_name(anatomy)
    cache = cache_dir() / f"{_file_key(path, template)}.npz"
    with file_lock(cache.with_suffix(".lock")):
        if not cache.is_file():
            prepared = _prepare(path, template)
            with atomic_path(cache) as tmp:
                with open(tmp, "wb") as handle:
                    np.savez_compressed(handle, **prepared)
    with np.load(cache) as stored:
        return Parent(name, source, stored["brain"], stored["mask"], stored["labels"], stored["to_template"],
                      (stored["forward"].tobytes(), stored["inverse"].tobytes()))


def _prepare(path: Path, template: Template) -> dict[str, np.ndarray]:
    """Brain extraction, N4 and the two registrations of one file (module docstring)."""
    from adheat_app.config import ExecutionOptions, RunConfig
    from adheat_app.preprocess.backends import BACKENDS
    from adheat_app.preprocess.register import apply_transform, n4

    head = read_head(path)
    mask = brain_mask(head, path)
    brain = n4(head, mask)
    brain = nib.Nifti1Image(np.where(mask, np.asarray(brain.dataobj, dtype=np.float32), 0), head.affine)
    fixed_template = get_template(max(PARENT_REGISTRATION_MM, template.resolution), template.space)
    fixed = nib.Nifti1Image(np.where(fixed_template.mask_array() > 0, np.asarray(
        fixed_template.t1w.dataobj, dtype=np.float32), 0), fixed_template.affine)
    grid = nib.Nifti1Image(np.zeros(template.shape, np.float32), template.affine)
    workdir = Path(tempfile.mkdtemp(prefix="adheat-parent-"))
    config = RunConfig(workdir, workdir, ("participant",), execution=ExecutionOptions(seed=0))
    try:
        affine = BACKENDS["affine"].register(brain, fixed, config, workdir / "affine")
        on_grid = np.asarray(apply_transform(brain, grid, affine.forward).dataobj, dtype=np.float32)
        grid_mask = np.asarray(apply_transform(nib.Nifti1Image(mask.astype(np.float32), head.affine), grid,
                                               affine.forward).dataobj) >= 0.5
        on_grid = np.where(grid_mask, np.clip(on_grid, 0, None), 0).astype(np.float32)
        syn = BACKENDS["syn"].register(nib.Nifti1Image(on_grid, template.affine), fixed, config, workdir / "syn")
        atlas = get_atlas(template.resolution, template.space)
        labels = np.asarray(apply_transform(atlas.img, grid, syn.inverse, "label").dataobj).astype(np.int16)
        coordinates = affine_points(template.affine, template.shape).astype(np.float32)
        world = np.stack([np.asarray(apply_transform(nib.Nifti1Image(c, template.affine), grid, syn.forward
                                                     ).dataobj, dtype=np.float64) for c in coordinates])
        inverse = np.linalg.inv(template.affine)
        to_template = (np.einsum("ij,j...->i...", inverse[:3, :3], world)
                       + inverse[:3, 3].reshape(3, 1, 1, 1)).astype(np.float32)
        transforms = [np.frombuffer(Path(f).read_bytes(), np.uint8) for f in (syn.forward, syn.inverse)]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return {"brain": on_grid, "mask": grid_mask, "labels": labels * grid_mask, "to_template": to_template,
            "forward": transforms[0], "inverse": transforms[1]}
