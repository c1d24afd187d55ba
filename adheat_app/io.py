"""Atomic file writing: nothing half-written is ever left under an output path.

Every output of adheat goes through these helpers. Each writes to a hidden
temporary file in the destination folder and renames it into place with
:func:`os.replace`, which is atomic on POSIX file systems, so an interrupted
run leaves either the old file, the new file, or nothing.

Files that several runs share (a job array writing one output folder) are
rewritten under :func:`file_lock`, so no run's update is lost. A write that
fails because the disk is full or the folder is read-only
(:func:`is_storage_error`) ends the run, as every later write would fail too.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd


#: ``errno`` values meaning "this folder cannot take more output": the run stops instead of failing item by item.
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM})


def is_storage_error(exc: BaseException) -> bool:
    """Whether ``exc`` says the output folder cannot be written (full disk, quota, read-only, no permission)."""
    return isinstance(exc, OSError) and exc.errno in STORAGE_ERRNOS


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path that is renamed to ``path`` when the block succeeds.

    The temporary file keeps the full suffix of ``path`` (``.nii.gz``, ``.h5``)
    so that libraries choosing a format by extension write the right one. On any
    exception the temporary file is removed and ``path`` is left untouched.

    Parameters
    ----------
    path : path-like
        Final destination. Its parent folder is created if needed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes[-2:]) if path.name.endswith(".nii.gz") else path.suffix
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp makes 0600; outputs follow the umask like any file
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def file_lock(path: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if missing) for the duration of the block.

    The lock is :func:`fcntl.flock` on an open file: other processes block
    until it is released, and it is released when the block ends or the
    process dies (a killed run never leaves a stale lock). Linux maps it to
    POSIX record locks on NFS, so it also holds between the nodes of a cluster
    that mount one output folder. Keep the block short: concurrent runs wait.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666 & ~_UMASK)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically and return the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"cannot serialise {type(obj).__name__} to JSON")


def write_json(path: str | os.PathLike, data: dict) -> Path:
    """Write ``data`` as indented, key-sorted JSON atomically."""
    return write_text(path, json.dumps(data, indent=2, sort_keys=True, default=_json_default) + "\n")


def read_json(path: str | os.PathLike) -> dict:
    """Read a JSON file into a dict."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


def write_tsv(path: str | os.PathLike, table: pd.DataFrame) -> Path:
    """Write a table as a BIDS-style TSV (tab separated, ``n/a`` for missing) atomically."""
    return write_text(path, table.to_csv(sep="\t", index=False, na_rep="n/a", lineterminator="\n"))


def save_nifti(path: str | os.PathLike, img: nib.Nifti1Image) -> Path:
    """Save a NIfTI image atomically (the format follows the extension of ``path``)."""
    with atomic_path(path) as tmp:
        nib.save(img, tmp)
    return Path(path)
