"""CPU memory reuse: large blocks stay on the heap inside the context, glibc's behaviour is restored after."""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import subprocess
import sys

import pytest

# Run in a fresh interpreter: memory that earlier tests left free on this process's heap would serve the probe
# blocks without any mmap, whatever the settings.
_PROBE = """
import ctypes, ctypes.util, json
import torch
from adheat_app.memory import reuse_cpu_memory

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]

libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.mallinfo2.restype = MallInfo2

def mmapped_blocks():
    # A block of at least 64 MB and larger than all free heap memory: glibc must map it or grow the heap.
    before = libc.mallinfo2()
    block = torch.empty(max(64 * 2**20, before.fordblks + 16 * 2**20) // 4)
    during = libc.mallinfo2().hblks
    del block
    return during - before.hblks

cpu = torch.device("cpu")
seen = [mmapped_blocks()]
with reuse_cpu_memory(cpu):
    seen.append(mmapped_blocks())
    with reuse_cpu_memory(cpu):  # nested (e.g. brain extraction inside a longer stage)
        seen.append(mmapped_blocks())
    seen.append(mmapped_blocks())  # the outer context still holds
seen.append(mmapped_blocks())
with reuse_cpu_memory(torch.device("meta")):  # other devices: glibc untouched
    seen.append(mmapped_blocks())
print(json.dumps(seen))
"""


@pytest.mark.skipif(not hasattr(ctypes.CDLL(ctypes.util.find_library("c")), "mallinfo2"), reason="needs glibc >= 2.33")
def test_reuse_cpu_memory_keeps_large_blocks_on_the_heap_then_restores_glibc():
    done = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True, timeout=120)
    # glibc's default maps each large block afresh (1); inside the context(s) it comes from the heap (0).
    assert json.loads(done.stdout.strip().splitlines()[-1]) == [1, 0, 0, 0, 1, 1]
