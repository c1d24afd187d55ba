"""Per-epoch training checkpoints: atomic to write, safe to load (``weights_only``).

A checkpoint holds only state dicts, tensors and plain Python values (ints,
floats, strings, lists, dicts), so :func:`torch.load` reads it with
``weights_only=True``. It is written through :func:`adheat_app.io.atomic_path`,
so a run killed while saving leaves the previous epoch's checkpoint intact.
"""

from __future__ import annotations

from pathlib import Path

import torch

from adheat_app.io import atomic_path


def save_checkpoint(path: Path, state: dict) -> Path:
    """Write ``state`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return Path(path)


def load_checkpoint(path: Path, device: torch.device) -> dict | None:
    """The checkpoint at ``path`` with tensors on ``device``, or None when there is none."""
    if not Path(path).is_file():
        return None
    return torch.load(path, map_location=device, weights_only=True)
