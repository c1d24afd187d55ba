"""What the classifiers read: the input channels of ``--input`` for each scan.

* ``intensity``: the preprocessed T1w (one channel);
* ``logjacobian``: the log Jacobian determinant of the scan's deformation to
  the template beyond its global linear part (tensor-based morphometry; written
  by the participant level after SyN registration), divided by
  :data:`LOGJACOBIAN_UNIT`;
* ``both``: the two as channels 0 and 1 of one input;
* ``auto`` (the default): ``both`` when every scan has a log Jacobian map,
  else ``intensity`` (affine registration, or images reused from fMRIPrep);
  the group level resolves it once (:func:`resolve_input`, which logs the
  choice), and every step that reads ``--input`` resolves it the same way
  (:func:`with_input`), so models, SVM and heatmaps see one input, which the
  model cards record.

Training, the SVM baseline and the heatmap methods all read the channels
through :func:`load_inputs`, so a model and its heatmaps always see the same
input.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from adheat_app.cohort import Scan
from adheat_app.config import RunConfig
from adheat_app.errors import InputError
from adheat_app.volumes import cache_key, load_channels

LOGGER = logging.getLogger(__name__)

#: Channels of each ``--input`` choice, in channel order.
INPUTS: dict[str, tuple[str, ...]] = {"intensity": ("intensity",), "logjacobian": ("logjacobian",),
                                      "both": ("intensity", "logjacobian")}
#: The log Jacobian channel is the log Jacobian divided by this: a 20 % local volume loss (log 0.8 = -0.22) reads
#: about -1.1, the scale of the intensity channel (white matter 1 after white-matter normalisation).
LOGJACOBIAN_UNIT = 0.2


def with_input(config: RunConfig, scans: Sequence[Scan]) -> RunConfig:
    """``config`` with ``--input auto`` replaced by the input it means for ``scans`` (see the module docstring)."""
    if config.training.input != "auto":
        return config
    kind = "both" if scans and all(scan.logjacobian is not None for scan in scans) else "intensity"
    return dataclasses.replace(config, training=dataclasses.replace(config.training, input=kind))


def resolve_input(config: RunConfig, scans: Sequence[Scan]) -> RunConfig:
    """:func:`with_input`, saying in the log what ``auto`` chose and why."""
    if config.training.input != "auto":
        return config
    config = with_input(config, scans)
    kind = config.training.input
    missing = sum(scan.logjacobian is None for scan in scans)
    if kind == "both":
        LOGGER.info("--input auto: both (intensity and log Jacobian) for all %d scans", len(scans))
    elif missing < len(scans):
        LOGGER.warning("--input auto: intensity, because %d of %d scans have no log Jacobian map (rerun their "
                       "participant level with --registration syn to use it)", missing, len(scans))
    else:
        LOGGER.info("--input auto: intensity (no scan has a log Jacobian map: affine registration or reused "
                    "fMRIPrep outputs)")
    return config


def channel_names(kind: str) -> tuple[str, ...]:
    """The channels of ``--input kind``."""
    return INPUTS[kind]


def card_channels(card: dict) -> tuple[str, ...]:
    """The input channels a model card records (``Input.Channels``; intensity for cards written before it existed)."""
    return tuple(card["Input"].get("Channels", ["intensity"]))


def split_channel(method: str) -> tuple[str, str | None]:
    """A map name and its channel: ``IGlogjacobian`` -> ``("IG", "logjacobian")``, ``IG`` -> ``("IG", None)``."""
    for name in sorted({c for names in INPUTS.values() for c in names}):
        if method.endswith(name) and len(method) > len(name):
            return method.removesuffix(name), name
    return method, None


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
