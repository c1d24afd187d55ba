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

from dataclasses import dataclass
from pathlib import Path

from adheat_app.bids import T1wInput
from adheat_app.errors import InputError
from adheat_app.layout import find_fmriprep_anat, fmriprep_mask

#: Voxel size (mm) of each TemplateFlow ``res`` label of MNI152NLin2009cAsym (no label: 1 mm).
RES_MM = {None: 1.0, "1": 1.0, "01": 1.0, "2": 2.0, "02": 2.0}


@dataclass(frozen=True)
class AnatFiles:
    """The reused fMRIPrep image and mask of one input."""

    image: Path
    mask: Path


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
    for path, name in find_fmriprep_anat(root, t1w):
        if name.get("space") != space:
            other_spaces.add(name.get("space"))
            continue
        mm = RES_MM.get(name.get("res"), float("nan"))
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
    mask = fmriprep_mask(image)
    if not mask.is_file():
        raise InputError(f"--anat-derivatives {root}: {image.name} has no brain mask ({mask.name} is missing)")
    return AnatFiles(image, mask)


def find_all(root: Path, inputs: list[T1wInput], space: str, resolution: float) -> dict[str, AnatFiles]:
    """:func:`find_anat` for every input (raises on the first problem, before anything is written)."""
    if not root.is_dir():
        raise InputError(f"--anat-derivatives {root} is not a folder; pass the fMRIPrep output folder")
    return {t.key: find_anat(root, t, space, resolution) for t in inputs}
