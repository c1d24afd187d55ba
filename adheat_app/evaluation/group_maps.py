"""Group mean heatmaps per method and diagnosis, from the per-subject heatmap files.

Methods are discovered from the files present
(``sub-*/[ses-*/]anat/*_space-<space>_res-<res>_desc-<Method>_heatmap.nii.gz``),
so the group level averages whatever the participant level or the group
level's own heatmap pass produced.

Normalisation: each subject's map is taken in absolute value and divided by
its total inside the template brain mask (unit total relevance), so every
subject weighs the same in a mean whatever the scale of its logits or
gradients; a mean map is then itself a distribution of relevance over the
brain (it sums to 1) and region fractions read directly off it. Maps whose
total is 0 are left out (logged). For methods whose sidecar says
``Signed: true`` the signed mean is written too, each subject's signed map
divided by the same total of absolute values.

Groups (the ``label`` entity): every diagnosis present (``AD``, ``CN``,
``MCI``...), ``all`` (positive and negative diagnoses together, as Wang et al.
averaged test subjects of both classes), and, where ``group/predictions.tsv``
holds the CNN's (``--model``) out-of-fold predictions, the correctly and
incorrectly classified scans of the positive and negative class
(``ADcorrect``, ``ADincorrect``, ``CNcorrect``, ``CNincorrect``). Outputs, one
folder per method (:func:`adheat_app.layout.group_map_path`):
``group/<Method>/space-<s>_res-<r>_label-<L>_desc-<Method>_stat-mean_heatmap.nii.gz``
(mean of absolute, unit-total maps) and ``..._stat-signedmean_heatmap.nii.gz``
(signed methods), each with a sidecar listing its subjects and sources and
``TargetClasses``: how many of its maps explain each class (the heatmaps'
``TargetLabel``). With ``--target positive`` (default) every map explains the
positive class; otherwise a group such as ``all`` mixes explanations of
different classes, which the sidecar's ``MixedTargets`` and a log warning say.

For signed methods the positive part of each subject's map (evidence for the
explained class), divided by the same total of absolute values, is kept as
well (``MethodMaps.positive``) and scored as sign ``positive``.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from adheat_app.bids import Derivatives, is_complete, software_versions
from adheat_app.cohort import Cohort, Scan
from adheat_app.io import read_json
from adheat_app.layout import PREDICTIONS, group_map_path, group_table, heatmap_path, scan_key, sidecar_path, to_label
from adheat_app.templates import Template

LOGGER = logging.getLogger(__name__)

ALL = "all"
NORMALISATION = ("absolute value of each subject's map divided by its total inside the template brain mask "
                 "(unit total relevance per subject), then averaged")
SIGNED_NORMALISATION = ("each subject's signed map divided by the total of its absolute values inside the "
                        "template brain mask, then averaged")


def read_predictions(derivs: Derivatives, model: str) -> dict[str, int]:
    """Out-of-fold correctness (1 correct, 0 wrong) per scan key from ``group/predictions.tsv`` rows of ``model``.

    With ``--repeats`` the table holds one row per repeat; the written group maps are repeat 0's, so are these
    (the scored labels, the diagnoses and ``all``, are the same in every repeat).
    """
    path = group_table(derivs.root, PREDICTIONS)
    if not path.is_file():
        return {}
    table = pd.read_csv(path, sep="\t", dtype={"subject": str, "session": str, "fold": str})
    table = table[table["model"] == model]
    if "repeat" in table.columns:
        table = table[table["repeat"] == 0]
    out = {}
    for row in table.itertuples(index=False):
        session = row.session if isinstance(row.session, str) and row.session else None
        out[scan_key(row.subject, session)] = int(int(row.predicted) == int(row.target))
    return out


def scan_groups(scan: Scan, correct: dict[str, int], positive: str, negative: str) -> list[str]:
    """The ``label`` groups a scan belongs to."""
    groups = [to_label(scan.diagnosis)] if scan.diagnosis else []
    if scan.diagnosis in (positive, negative):
        groups.append(ALL)
        if scan.key in correct:
            groups.append(to_label(scan.diagnosis) + ("correct" if correct[scan.key] else "incorrect"))
    return groups


def method_digest(derivs: Derivatives, cohort: Cohort, method: str, correct: dict[str, int],
                  root: Path | None = None) -> str:
    """Hash of a method's inputs: heatmap file names, their sidecars and each scan's groups.

    A recomputed heatmap gets a new sidecar (its wall time and parameters), so
    this changes whenever a group map would; it reads no image. ``root``: where the per-scan maps lie (default
    the output dataset; a repeat's folder for ``--repeats``).
    """
    digest = hashlib.sha256()
    for scan in cohort.scans:
        path = heatmap_path(root or derivs.root, scan, cohort.space, cohort.res_label, method)
        if path.is_file():
            side = sidecar_path(path)
            groups = scan_groups(scan, correct, cohort.positive_label, cohort.negative_label)
            digest.update(f"{path.name}|{side.read_text() if side.is_file() else ''}|{','.join(groups)}\n".encode())
    return digest.hexdigest()[:16]


@dataclass
class MethodMaps:
    """One method's normalised per-subject maps (brain voxels) and its group means.

    Attributes
    ----------
    method : str
        Method name.
    signed : bool
        Whether the method's maps are signed (from the sidecars).
    scans : list of Scan
        Scans with a usable map, in the order of ``values`` rows.
    files : list of Path
        Their heatmap files.
    values : numpy.ndarray
        ``(n, V)`` float32: absolute maps with unit total inside the mask.
    groups : dict of str to list of int
        Row indices per ``label`` group.
    signed_means : dict of str to numpy.ndarray
        Signed mean per group (signed methods only).
    positive : numpy.ndarray or None
        ``(n, V)`` float32: positive part of each signed map over its total of absolute values
        (signed methods only).
    digest : str
        Hash of the inputs (file names, sidecars, groups), recorded in the outputs' sidecars.
    targets : list of str
        Class each map explains (its sidecar's ``TargetLabel``), in the order of ``values`` rows.
    """

    method: str
    signed: bool
    scans: list[Scan]
    files: list[Path]
    values: np.ndarray
    groups: dict[str, list[int]]
    signed_means: dict[str, np.ndarray] = field(default_factory=dict)
    positive: np.ndarray | None = None
    digest: str = ""
    targets: list[str] = field(default_factory=list)

    def target_classes(self, label: str) -> dict[str, int]:
        """How many maps of a group explain each class."""
        counts: dict[str, int] = {}
        for i in self.groups[label]:
            counts[self.targets[i]] = counts.get(self.targets[i], 0) + 1
        return dict(sorted(counts.items()))

    def mean(self, label: str) -> np.ndarray:
        """Mean of the normalised absolute maps of a group."""
        return self.values[self.groups[label]].mean(axis=0)

    def subset(self, label: str) -> np.ndarray:
        """The normalised absolute maps of a group ``(n_group, V)``."""
        return self.values[self.groups[label]]


def load_method(derivs: Derivatives, cohort: Cohort, template: Template, method: str,
                correct: dict[str, int], root: Path | None = None) -> MethodMaps | None:
    """Read and normalise every scan's heatmap of ``method`` (None when no usable map exists); ``root``: where
    the per-scan maps lie (default the output dataset; :func:`adheat_app.layout.repeat_root` for a repeat's)."""
    mask = template.mask_array()
    scans, files, rows, positives, signed_flags, targets = [], [], [], [], [], []
    groups: dict[str, list[int]] = {}
    signed_sums: dict[str, np.ndarray] = {}
    for scan in cohort.scans:
        path = heatmap_path(root or derivs.root, scan, cohort.space, cohort.res_label, method)
        if not path.is_file():
            continue
        data = np.asarray(nib.load(path).dataobj, dtype=np.float32)[mask]
        total = float(np.abs(data).sum(dtype=np.float64))
        if not np.isfinite(total) or total == 0:
            LOGGER.warning("%s: heatmap is zero or not finite inside the brain mask; left out of group maps", path.name)
            continue
        side = sidecar_path(path)
        sidecar = read_json(side) if side.is_file() else {}
        signed = bool(sidecar.get("Signed", bool((data < 0).any())))
        index = len(rows)
        member = scan_groups(scan, correct, cohort.positive_label, cohort.negative_label)
        for label in member:
            groups.setdefault(label, []).append(index)
            if signed:
                signed_sums[label] = signed_sums.get(label, 0) + data / np.float32(total)
        scans.append(scan)
        files.append(path)
        rows.append(np.abs(data) / np.float32(total))
        positives.append(np.maximum(data, 0) / np.float32(total))
        signed_flags.append(signed)
        targets.append(str(sidecar.get("TargetLabel", "unknown")))
    if not rows:
        return None
    signed = all(signed_flags)
    signed_means = {label: signed_sums[label] / len(groups[label]) for label in groups} if signed else {}
    LOGGER.info("%s: %d heatmap(s); groups %s", method, len(rows),
                ", ".join(f"{k}={len(v)}" for k, v in sorted(groups.items())))
    maps = MethodMaps(method, signed, scans, files, np.stack(rows), groups, signed_means,
                      np.stack(positives) if signed else None, method_digest(derivs, cohort, method, correct, root),
                      targets)
    for label in sorted(groups):
        if len(maps.target_classes(label)) > 1:
            LOGGER.warning("%s group %s averages explanations of different classes %s (--target); --target "
                           "positive explains the positive class for every scan", method, label,
                           maps.target_classes(label))
    return maps


def write_group_maps(derivs: Derivatives, template: Template, maps: MethodMaps, overwrite: bool) -> list[Path]:
    """Write the mean (and signed mean) map of every group; skip files already made from the same inputs."""
    mask = template.mask_array()
    written = []
    for label, rows in sorted(maps.groups.items()):
        outputs = [("mean", maps.mean(label), NORMALISATION)]
        if label in maps.signed_means:
            outputs.append(("signedmean", maps.signed_means[label], SIGNED_NORMALISATION))
        for stat, values, normalisation in outputs:
            path = group_map_path(derivs.root, template.space, template.res_label, maps.method, label, stat)
            written.append(path)
            if not overwrite and is_complete(path, InputsHash=maps.digest):
                continue
            volume = np.zeros(template.shape, dtype=np.float32)
            volume[mask] = values
            derivs.write_image(path, nib.Nifti1Image(volume, template.affine), {
                "Description": f"{'Signed mean' if stat == 'signedmean' else 'Mean'} {maps.method} heatmap of "
                               f"group {label}",
                "Method": maps.method, "Label": label, "Statistic": stat, "Signed": stat == "signedmean",
                "N": len(rows), "Subjects": [maps.scans[i].key for i in rows], "Normalisation": normalisation,
                "TargetClasses": maps.target_classes(label), "MixedTargets": len(maps.target_classes(label)) > 1,
                "Mask": "template brain mask", "Sources": [derivs.source_uri(maps.files[i]) for i in rows],
                "InputsHash": maps.digest, "Template": template.describe(), "Software": software_versions(),
            })
    return written
