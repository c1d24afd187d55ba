"""Compute device, thread count, seeds and deterministic execution for training (and heatmaps).

Randomness in training (weight initialisation, batch order, augmentation,
dropout) is seeded from :func:`epoch_seed`, a pure function of the run seed,
the fold and the epoch. Every epoch therefore starts from a known random
state, so a run resumed from an epoch checkpoint continues exactly as an
uninterrupted run, and no random-generator state needs to be saved.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator

import numpy as np
import torch

from adheat_app.config import RunConfig
from adheat_app.errors import InputError


def resolve_device(config: RunConfig) -> torch.device:
    """The torch device of ``--device`` (``auto``: CUDA when available, else CPU).

    Raises
    ------
    InputError
        For ``--device cuda`` on a machine without CUDA.
    """
    choice = config.execution.device
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if choice == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA device is available; use --device cpu or auto")
    return torch.device(choice)


def epoch_seed(seed: int, fold: int, epoch: int) -> int:
    """Seed of one epoch of one fold (epoch 0 also seeds the initial weights)."""
    return int(np.random.SeedSequence([seed, fold, epoch]).generate_state(1)[0])


def seed_everything(seed: int) -> np.random.Generator:
    """Seed torch (CPU and CUDA), numpy's and Python's global generators; return a numpy Generator."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)
    return np.random.default_rng(seed)


@contextlib.contextmanager
def deterministic(device: torch.device, n_threads: int, exact: bool = False) -> Iterator[None]:
    """Deterministic algorithms (strict on CPU, warn-only on CUDA) and ``n_threads`` torch threads, then restore.

    torch's deterministic mode also fills every new tensor with NaN (a debugging
    aid that catches reads of uninitialised memory); that is switched off here,
    since results do not depend on it and it costs time (``docs/performance.md``).

    Parameters
    ----------
    device : torch.device
        The compute device.
    n_threads : int
        Intra-op threads for torch; 0 keeps the current setting.
    exact : bool
        Also turn TF32 off for CUDA convolutions and matrix products (heatmaps,
        whose maps TF32 changes: ``docs/performance.md``).
    """
    previous = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
                torch.get_num_threads(), torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32,
                torch.backends.cuda.matmul.allow_tf32, torch.utils.deterministic.fill_uninitialized_memory)
    torch.use_deterministic_algorithms(True, warn_only=device.type == "cuda")
    torch.utils.deterministic.fill_uninitialized_memory = False
    torch.backends.cudnn.benchmark = False
    if exact:
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    if n_threads > 0:
        torch.set_num_threads(n_threads)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
        torch.set_num_threads(previous[2])
        torch.backends.cudnn.benchmark = previous[3]
        torch.backends.cudnn.allow_tf32 = previous[4]
        torch.backends.cuda.matmul.allow_tf32 = previous[5]
        torch.utils.deterministic.fill_uninitialized_memory = previous[6]
