"""What the classifiers read: the input channels of ``--input`` for each scan.

* ``intensity``: the preprocessed T1w (one channel);
* ``logjacobian``: the log Jacobian determinant of the scan's deformation to
  the template beyond its global linear part (tensor-based morphometry; written
  by the participant level after SyN registration), divided by
  :data:`LOGJACOBIAN_UNIT`;
* ``both``: the two as channels 0 and 1 of one input;
* ``auto`` (the default): ``both`` when every scan has a log Jacobian map,
  else ``intensity`` (affine registration, or images reused from fMRIPrep).

``--input`` is resolved once, when the cohort is loaded, into
:attr:`Cohort.channels <adheat_app.cohort.Cohort.channels>`
(:func:`adheat_app.cohort.input_channels`; the group level logs the choice
with :func:`log_input`); training, the SVM, the evaluation and the report read
the channels from the cohort, the heatmaps from the model cards, which record
them.

Training, the SVM baseline and the heatmap methods all read the channels
through :func:`load_inputs`, so a model and its heatmaps always see the same
input.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from adheat_app.cohort import INPUTS, INTENSITY, LOGJACOBIAN, Cohort, Scan
from adheat_app.config import RunConfig
from adheat_app.errors import InputError
from adheat_app.layout import CHANNELS
from adheat_app.volumes import cache_key, load_channels

LOGGER = logging.getLogger(__name__)

#: The log Jacobian channel is the log Jacobian divided by this: a 20 % local volume loss (log 0.8 = -0.22) reads
#: about -1.1, the scale of the intensity channel (white matter 1 after white-matter normalisation).
LOGJACOBIAN_UNIT = 0.2


def log_input(config: RunConfig, cohort: Cohort) -> None:
    """Say in the log which channels ``--input`` gave the cohort, and for ``auto`` why."""
    if config.training.input != "auto":
        return
    scans = cohort.scans
    missing = sum(scan.logjacobian is None for scan in scans)
    if cohort.channels == INPUTS["both"]:
        LOGGER.info("--input auto: both (intensity and log Jacobian) for all %d scans", len(scans))
    elif missing < len(scans):
        LOGGER.warning("--input auto: intensity, because %d of %d scans have no log Jacobian map (rerun their "
                       "participant level with --registration syn to use it)", missing, len(scans))
    else:
        LOGGER.info("--input auto: intensity (no scan has a log Jacobian map: affine registration or reused "
                    "fMRIPrep outputs)")


def input_kind(channels: Sequence[str]) -> str:
    """The ``--input`` choice whose channels are ``channels`` (``("intensity", "logjacobian")`` -> ``both``)."""
    for kind, names in INPUTS.items():
        if names == tuple(channels):
            return kind
    raise ValueError(f"no --input reads the channels {tuple(channels)}")


def card_channels(card: dict) -> tuple[str, ...]:
    """The input channels a model card records (``Input.Channels``; intensity for cards written before it existed)."""
    return tuple(card["Input"].get("Channels", ["intensity"]))


def channel_paths(scan: Scan, channels: Sequence[str]) -> tuple[Path, ...]:
    """The images of one scan's input ``channels``.

    Raises
    ------
    InputError
        When a scan has no log Jacobian map (its participant level ran without SyN registration).
    """
    paths = []
    for name in channels:
        if name == INTENSITY:
            paths.append(scan.image)
        elif name != LOGJACOBIAN:
            raise ValueError(f"unknown input channel {name!r}: one of {CHANNELS}")
        elif scan.logjacobian is None:
            raise InputError(f"{scan.image}: no log Jacobian map (desc-logjacobian) beside it, needed by --input "
                             f"{input_kind(channels)}; rerun the participant level with --registration syn")
        else:
            paths.append(scan.logjacobian)
    return tuple(paths)


def input_key(scans: Sequence[Scan], channels: Sequence[str]) -> str:
    """Content hash of the input images of ``scans`` (changes when any channel image does)."""
    return cache_key([p for scan in scans for p in channel_paths(scan, channels)])


def load_inputs(scans: Sequence[Scan], channels: Sequence[str], work_dir: Path) -> np.ndarray:
    """The input of every scan as a read-only float16 array ``(N, C, X, Y, Z)`` (see the module docstring)."""
    scales = [1.0 / LOGJACOBIAN_UNIT if name == LOGJACOBIAN else 1.0 for name in channels]
    return load_channels([channel_paths(scan, channels) for scan in scans], work_dir, scales)
