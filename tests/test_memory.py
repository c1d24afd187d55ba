"""CPU memory reuse: large blocks stay on the heap inside the context, glibc's behaviour is restored after."""

from __future__ import annotations

import ctypes
import ctypes.util

import pytest
import torch

from adheat_app.memory import reuse_cpu_memory


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


def _mmapped_blocks_after_allocating(megabytes: int) -> int:
    """How many more mmap-ed blocks glibc holds while a tensor of ``megabytes`` is alive."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.mallinfo2.restype = _MallInfo2
    before = libc.mallinfo2().hblks
    block = torch.ones(megabytes * 2**18)  # float32
    during = libc.mallinfo2().hblks
    del block
    return during - before


@pytest.mark.skipif(not hasattr(ctypes.CDLL(ctypes.util.find_library("c")), "mallinfo2"), reason="needs glibc >= 2.33")
def test_reuse_cpu_memory_keeps_large_blocks_on_the_heap_then_restores_glibc():
    cpu = torch.device("cpu")
    assert _mmapped_blocks_after_allocating(64) == 1  # glibc's default: a fresh mmap per large block
    with reuse_cpu_memory(cpu):
        assert _mmapped_blocks_after_allocating(64) == 0
        with reuse_cpu_memory(cpu):  # nested (e.g. brain extraction inside a longer stage)
            assert _mmapped_blocks_after_allocating(64) == 0
        assert _mmapped_blocks_after_allocating(64) == 0  # the outer context still holds
    assert _mmapped_blocks_after_allocating(64) == 1
    with reuse_cpu_memory(torch.device("meta")):  # other devices: glibc untouched
        assert _mmapped_blocks_after_allocating(64) == 1
