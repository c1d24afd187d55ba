"""CPU memory reuse for torch work on large volumes (training, heatmaps, brain extraction).

glibc returns large freed blocks to the system at once and maps fresh ones
for the next allocation; with 3D volumes every pass then pays page faults and
zero-filling again. :func:`reuse_cpu_memory` keeps freed memory in the process
for the length of a stage.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is not loaded by importing this module (preprocessing imports it)
    import torch

# glibc's mallopt parameters and their defaults (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_DEFAULT_TRIM_THRESHOLD, _DEFAULT_MMAP_MAX = 128 * 1024, 65536
# Open reuse_cpu_memory contexts (nested ones leave the settings to the outermost).
_depth = 0
_lock = threading.Lock()


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
    ``M_TRIM_THRESHOLD`` -1: never trim); the speed-ups are in
    ``docs/performance.md``. The price is memory: what the process freed stays
    resident until the context ends. On exit
    glibc's settings are restored (its dynamic mmap threshold stays fixed from
    then on) and the kept memory is returned (``malloc_trim``). Results are
    bitwise the same. Contexts may nest (the outermost one restores). Does
    nothing on other devices or C libraries.

    Parameters
    ----------
    device : torch.device
        The compute device (CUDA memory has its own caching allocator).
    """
    global _depth
    libc = _glibc() if device.type == "cpu" else None
    if libc is None:
        yield
        return
    with _lock:
        if _depth == 0:
            libc.mallopt(_M_MMAP_MAX, 0)
            libc.mallopt(_M_TRIM_THRESHOLD, -1)
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                libc.mallopt(_M_MMAP_MAX, _DEFAULT_MMAP_MAX)
                libc.mallopt(_M_TRIM_THRESHOLD, _DEFAULT_TRIM_THRESHOLD)
                libc.malloc_trim(0)
