"""Compute device, thread count, seeds, deterministic execution and CPU memory reuse for training and heatmaps.

Randomness in training (weight initialisation, batch order, augmentation,
dropout) is seeded from :func:`epoch_seed`, a pure function of the run seed,
the fold and the epoch. Every epoch therefore starts from a known random
state, so a run resumed from an epoch checkpoint continues exactly as an
uninterrupted run, and no random-generator state needs to be saved.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import random
from collections.abc import Iterator

import numpy as np
import torch

from adheat_app.config import RunConfig
from adheat_app.errors import InputError

# glibc's mallopt parameters and their defaults (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_DEFAULT_TRIM_THRESHOLD, _DEFAULT_MMAP_MAX = 128 * 1024, 65536


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
    since results do not depend on it and it cost ~10 % of a heatmap pass on
    the CPU (measured with ``benchmarks/heatmaps.py``).

    Parameters
    ----------
    device : torch.device
        The compute device.
    n_threads : int
        Intra-op threads for torch; 0 keeps the current setting.
    exact : bool
        Also turn TF32 off for CUDA convolutions and matrix products (heatmaps:
        measured on an H200, TF32 lowered the correlation of LRP and saliency
        maps with the same maps in float32 to 0.98).
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


def _glibc() -> ctypes.CDLL | None:
    """The C library when it is glibc (has ``mallopt`` and ``malloc_trim``), else None."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


@contextlib.contextmanager
def reuse_cpu_memory(device: torch.device) -> Iterator[None]:
    """On the CPU with glibc, keep freed tensor memory in the process for reuse, then give it back.

    glibc serves every allocation above its mmap threshold (at most 32 MB; a
    2 mm scan's activations are larger) with a fresh ``mmap`` and unmaps it on
    free, so every forward/backward pass pays page faults and the kernel's
    zero-filling for all of its buffers again. Inside this context large
    blocks come from the heap and freed ones are kept (``M_MMAP_MAX`` 0,
    ``M_TRIM_THRESHOLD`` -1: never trim). Measured on 2 CPU threads at 2 mm:
    heatmap passes 1.8-2.7x faster (``benchmarks/heatmaps.py --no-reuse-memory``
    against the default, README), a ``rieke2018`` training step with batch 4
    1.1-1.3 s -> 0.6 s. The price is memory: what the process freed stays
    resident until the context ends (the heatmap benchmark's peak 3.3 GB
    instead of 2.3 GB). On exit glibc's settings are restored (its dynamic
    mmap threshold stays fixed from then on) and the kept memory is returned
    (``malloc_trim``). Results are bitwise the same. Does nothing on other
    devices or C libraries.

    Parameters
    ----------
    device : torch.device
        The compute device (CUDA memory has its own caching allocator).
    """
    libc = _glibc() if device.type == "cpu" else None
    if libc is None:
        yield
        return
    libc.mallopt(_M_MMAP_MAX, 0)
    libc.mallopt(_M_TRIM_THRESHOLD, -1)
    try:
        yield
    finally:
        libc.mallopt(_M_MMAP_MAX, _DEFAULT_MMAP_MAX)
        libc.mallopt(_M_TRIM_THRESHOLD, _DEFAULT_TRIM_THRESHOLD)
        libc.malloc_trim(0)
