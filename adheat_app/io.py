"""Atomic file writing: nothing half-written is ever left under an output path.

Every output of adheat goes through these helpers. Each writes to a hidden
temporary file in the destination folder and renames it into place with
:func:`os.replace`, which is atomic on POSIX file systems, so an interrupted
run leaves either the old file, the new file, or nothing (and, after a
SIGKILL, a hidden temporary file, which :func:`remove_stale_partials` deletes
when the next run starts).

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
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd

from adheat_app.layout import EXTENSIONS, sidecar_path


#: ``errno`` values of a file system that takes no more writes (full, over quota, read-only): every job would fail.
FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})
#: ``errno`` values of a file or folder this process may not write.
PERMISSION_ERRNOS = frozenset({errno.EACCES, errno.EPERM})


def is_storage_error(exc: BaseException, permission: bool = True) -> bool:
    """Whether ``exc`` says an output cannot be written: full disk, quota, read-only file system, and with
    ``permission`` also missing write permission (which may concern one file only)."""
    codes = FULL_ERRNOS | PERMISSION_ERRNOS if permission else FULL_ERRNOS
    return isinstance(exc, OSError) and exc.errno in codes


_HOST = socket.gethostname()
#: Marks a temporary file of :func:`atomic_path`: ``.<name>.partial-<host>-<pid>-<random>.tmp<ext>``.
_PARTIAL = ".partial-"
#: Age after which any temporary file of :func:`atomic_path` is stale (no single write takes this long).
STALE_PARTIAL_HOURS = 6.0


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
    suffix = next((ext for ext in EXTENSIONS if path.name.endswith(ext)), path.suffix)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}{_PARTIAL}{_HOST}-{os.getpid()}-", suffix=f".tmp{suffix}",
                               dir=path.parent)
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


def _partial_writer(name: str) -> tuple[str, int] | None:
    """Host and process id of the writer of a temporary file of :func:`atomic_path` (None for any other name)."""
    _, marker, rest = name.partition(_PARTIAL)
    stem, tmp, _ = rest.rpartition(".tmp")
    host, _, pid = stem.rpartition("-")[0].rpartition("-")
    if not (marker and tmp and host and pid.isdigit()):
        return None
    return host, int(pid)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_partials(root: str | os.PathLike) -> list[Path]:
    """Delete the temporary files of :func:`atomic_path` that killed writers left under ``root``.

    A process killed with SIGKILL cannot remove its temporary file. One is
    stale when its writer ran on this host and no longer exists, or when it is
    older than :data:`STALE_PARTIAL_HOURS` (a writer on another node of a
    cluster); the temporary files of live writers (concurrent runs) are kept.

    Returns
    -------
    list of Path
        The files deleted.
    """
    removed = []
    now = time.time()
    for path in Path(root).rglob(f".*{_PARTIAL}*.tmp*"):
        writer = _partial_writer(path.name)
        if writer is None or not path.is_file():
            continue
        dead = writer[0] == _HOST and not _alive(writer[1])
        try:
            old = now - path.stat().st_mtime > STALE_PARTIAL_HOURS * 3600
        except FileNotFoundError:  # renamed into place meanwhile
            continue
        if dead or old:
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


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


def write_table(path: str | os.PathLike, table: pd.DataFrame, sidecar: dict) -> Path:
    """Write a TSV table and its JSON sidecar (:func:`~adheat_app.layout.sidecar_path`), each atomically."""
    write_json(sidecar_path(path), sidecar)
    return write_tsv(path, table)


def nifti_image(data: np.ndarray, affine: np.ndarray, code: int = 4, header: nib.Nifti1Header | None = None,
                units: tuple[str, ...] = ()) -> nib.Nifti1Image:
    """A NIfTI image whose qform and sform are both ``affine`` with ``code``.

    Parameters
    ----------
    data : numpy.ndarray
        Voxel values (the image keeps their dtype unless ``header`` says otherwise).
    affine : numpy.ndarray
        4x4 voxel-to-world matrix.
    code : int
        NIfTI xform code: 1 scanner (a subject's grid), 4 MNI (a template grid).
    header : nibabel.Nifti1Header, optional
        Header to start from.
    units : tuple of str
        Spatial (and temporal) units for ``set_xyzt_units``, e.g. ``("mm",)``; empty: left unset.
    """
    img = nib.Nifti1Image(data, affine, header)
    img.set_qform(affine, code=code)
    img.set_sform(affine, code=code)
    if units:
        img.header.set_xyzt_units(*units)
    return img


def save_nifti(path: str | os.PathLike, img: nib.Nifti1Image) -> Path:
    """Save a NIfTI image atomically (the format follows the extension of ``path``)."""
    with atomic_path(path) as tmp:
        nib.save(img, tmp)
    return Path(path)
