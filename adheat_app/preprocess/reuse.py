"""Reuse of fMRIPrep/sMRIPrep anatomical outputs (``--anat-derivatives DIR``).

For each T1w input the folder must hold
``sub-<s>[_ses-<x>]_space-<space>[_res-<r>]_desc-preproc_T1w.nii.gz`` and the
matching ``desc-brain_mask`` in the analysis template's space, either in the
session's ``anat`` folder or in the subject's (fMRIPrep makes one anatomical
reference per subject). Where several resolutions exist, the one closest to
the analysis grid is used. Anything else is an :class:`InputError` raised
before any output is written.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from adheat_app.bids import T1wInput
from adheat_app.errors import InputError

_NAME_RE = re.compile(r"^sub-(?P<sub>[A-Za-z0-9]+)(?:_ses-(?P<ses>[A-Za-z0-9]+))?(?:_[a-z]+-[A-Za-z0-9]+)*?"
                      r"_space-(?P<space>[A-Za-z0-9]+)(?:_res-(?P<res>[A-Za-z0-9]+))?_desc-preproc_T1w\.nii(\.gz)?$")
#: Voxel size (mm) of each TemplateFlow ``res`` label of MNI152NLin2009cAsym (no label: 1 mm).
RES_MM = {None: 1.0, "1": 1.0, "01": 1.0, "2": 2.0, "02": 2.0}


@dataclass(frozen=True)
class AnatFiles:
    """The reused fMRIPrep image and mask of one input."""

    image: Path
    mask: Path


def _candidates(root: Path, t1w: T1wInput) -> list[Path]:
    folders = [root / f"sub-{t1w.subject}" / "anat"]
    if t1w.session:
        folders.insert(0, root / f"sub-{t1w.subject}" / f"ses-{t1w.session}" / "anat")
    found = []
    for folder in folders:
        found.extend(sorted(folder.glob(f"sub-{t1w.subject}*_desc-preproc_T1w.nii*")))
    return found


def find_anat(root: Path, t1w: T1wInput, space: str, resolution: float) -> AnatFiles:
    """The fMRIPrep preprocessed T1w and brain mask of one input in ``space``.

    Raises
    ------
    InputError
        When no preprocessed T1w exists for the input, when it exists only in
        other spaces, or when its brain mask is missing.
    """
    matches = []
    other_spaces = set()
    for path in _candidates(root, t1w):
        m = _NAME_RE.match(path.name)
        if not m or (m["ses"] and m["ses"] != t1w.session):
            continue
        if m["space"] != space:
            other_spaces.add(m["space"])
            continue
        mm = RES_MM.get(m["res"], float("nan"))
        matches.append((abs(mm - resolution) if mm == mm else 99.0, path))
    where = f"{root}/sub-{t1w.subject}"
    if not matches:
        if other_spaces:
            raise InputError(f"--anat-derivatives {root}: {t1w.key} has desc-preproc_T1w only in space(s) "
                             f"{', '.join(sorted(other_spaces))}; adheat needs space-{space} (rerun fMRIPrep with "
                             f"--output-spaces {space})")
        raise InputError(f"--anat-derivatives {root}: no {t1w.key}*_space-{space}_desc-preproc_T1w.nii.gz under "
                         f"{where}; point --anat-derivatives at the fMRIPrep output folder")
    image = min(matches)[1]
    mask = image.with_name(image.name.replace("_desc-preproc_T1w", "_desc-brain_mask"))
    if not mask.is_file():
        raise InputError(f"--anat-derivatives {root}: {image.name} has no brain mask ({mask.name} is missing)")
    return AnatFiles(image, mask)


def find_all(root: Path, inputs: list[T1wInput], space: str, resolution: float) -> dict[str, AnatFiles]:
    """:func:`find_anat` for every input (raises on the first problem, before anything is written)."""
    if not root.is_dir():
        raise InputError(f"--anat-derivatives {root} is not a folder; pass the fMRIPrep output folder")
    return {t.key: find_anat(root, t, space, resolution) for t in inputs}
