"""What the classifiers read: the input channels of ``--input`` for each scan.

* ``intensity``: the preprocessed T1w (one channel);
* ``logjacobian``: the log Jacobian determinant of the scan's deformation to
  the template beyond its global linear part (tensor-based morphometry; written
  by the participant level after SyN registration), divided by
  :data:`LOGJACOBIAN_UNIT`;
* ``both``: the two as channels 0 and 1 of one input.

Training, the SVM baseline and the heatmap methods all read the channels
through :func:`load_inputs`, so a model and its heatmaps always see the same
input.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from adheat_app.cohort import Scan
from adheat_app.errors import InputError
from adheat_app.volumes import cache_key, load_channels

#: Channels of each ``--input`` choice, in channel order.
INPUTS: dict[str, tuple[str, ...]] = {"intensity": ("intensity",), "logjacobian": ("logjacobian",),
                                      "both": ("intensity", "logjacobian")}
#: The log Jacobian channel is the log Jacobian divided by this: a 20 % local volume loss (log 0.8 = -0.22) reads
#: about -1.1, the scale of the intensity channel (white matter 1 after white-matter normalisation).
LOGJACOBIAN_UNIT = 0.2


def channel_names(kind: str) -> tuple[str, ...]:
    """The channels of ``--input kind``."""
    return INPUTS[kind]


def channel_paths(scan: Scan, kind: str) -> tuple[Path, ...]:
    """The images of one scan's channels.

    Raises
    ------
    InputError
        When a scan has no log Jacobian map (its participant level ran without SyN registration).
    """
    paths = []
    for name in INPUTS[kind]:
        if name == "intensity":
            paths.append(scan.image)
        elif scan.logjacobian is None:
            raise InputError(f"{scan.image}: no log Jacobian map (desc-logjacobian) beside it, needed by --input "
                             f"{kind}; rerun the participant level with --registration syn")
        else:
            paths.append(scan.logjacobian)
    return tuple(paths)


def input_key(scans: Sequence[Scan], kind: str) -> str:
    """Content hash of the input images of ``scans`` (changes when any channel image does)."""
    return cache_key([p for scan in scans for p in channel_paths(scan, kind)])


def load_inputs(scans: Sequence[Scan], kind: str, work_dir: Path) -> np.ndarray:
    """The input of every scan as a read-only float16 array ``(N, C, X, Y, Z)`` (see the module docstring)."""
    scales = [1.0 / LOGJACOBIAN_UNIT if name == "logjacobian" else 1.0 for name in INPUTS[kind]]
    return load_channels([channel_paths(scan, kind) for scan in scans], work_dir, scales)
