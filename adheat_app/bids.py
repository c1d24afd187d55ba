"""BIDS input discovery, labels, and the BIDS-Derivatives output dataset.

Inputs: the dataset is indexed with pybids (the index is cached in the work
folder, rebuilt only when the dataset's files change, and safe to share
between concurrent runs), T1w images are
collected per subject and session, and diagnoses are read from
``participants.tsv``. Every user-supplied label is checked against the BIDS
label grammar (letters and digits only) before it is used in a path, so path
traversal is impossible.

Outputs: :class:`Derivatives` names files from BIDS entities,
writes them atomically with a JSON sidecar that records how they were made,
and keeps ``dataset_description.json`` and ``.bidsignore`` up to date. Nothing
is ever written inside the input dataset.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import pandas as pd

from adheat_app import __version__
from adheat_app.errors import InputError
from adheat_app.io import file_lock, read_json, save_nifti, write_json, write_text
from adheat_app.layout import (
    BIDSIGNORE, NIFTI, NIFTI_EXTENSIONS, dataset_description, filename, group_path, is_label, participants_table,
    scan_key, sidecar_path, subject_path,
)

LOGGER = logging.getLogger(__name__)



def normalize_label(label: str, prefix: str) -> str:
    """Strip an optional ``sub-``/``ses-`` prefix and check the BIDS label grammar.

    Raises
    ------
    InputError
        If the label contains anything but letters and digits (``/``, ``..``,
        whitespace, ``_``...), which would not be a BIDS label.
    """
    text = str(label).strip()
    if text.startswith(f"{prefix}-"):
        text = text[len(prefix) + 1:]
    if not is_label(text):
        raise InputError(f"invalid {prefix} label {label!r}: BIDS labels contain only letters and digits "
                         f"(e.g. '{prefix}-01' or '01')")
    return text


def check_dataset_paths(bids_dir: Path, output_dir: Path) -> None:
    """Refuse a missing input dataset and an output folder inside it.

    ``bids_dir/derivatives/...`` is allowed, as BIDS expects derivatives there.
    """
    if not bids_dir.is_dir():
        raise InputError(f"bids_dir {bids_dir} does not exist or is not a folder; pass the root of a BIDS dataset")
    if not dataset_description(bids_dir).is_file():
        raise InputError(f"{dataset_description(bids_dir)} is missing: bids_dir must be the root of a "
                         "BIDS dataset")
    out = output_dir.resolve()
    root = bids_dir.resolve()
    if out == root or (root in out.parents and not (root / "derivatives") in [out, *out.parents]):
        raise InputError(f"output_dir {output_dir} is inside bids_dir {bids_dir}; write outputs elsewhere or "
                         f"under {bids_dir / 'derivatives'}")
    if (root / "derivatives") == out:
        raise InputError(f"output_dir {output_dir} is the derivatives folder itself; use "
                         f"{bids_dir / 'derivatives' / 'adheat'}")


def validator_command() -> list[str] | None:
    """The official BIDS validator executable, or None when it is not installed."""
    exe = shutil.which("bids-validator-deno") or shutil.which(
        "bids-validator-deno", path=os.path.dirname(sys.executable))
    return [exe] if exe else None


def run_bids_validator(bids_dir: Path) -> None:
    """Run the official BIDS validator; raise with its errors in one block.

    When the validator is not installed, log a warning and return.
    """
    cmd = validator_command()
    if cmd is None:
        LOGGER.warning("bids-validator-deno is not installed: skipping BIDS validation "
                       "(pip install bids-validator-deno, or pass --skip-bids-validation)")
        return
    proc = subprocess.run([*cmd, "--format", "json", "--ignoreWarnings", str(bids_dir)],
                          capture_output=True, text=True, timeout=600)
    if proc.returncode == 0:
        LOGGER.info("BIDS validator: no errors in %s", bids_dir)
        return
    try:
        issues = json.loads(proc.stdout)["issues"]["issues"]
    except (ValueError, KeyError, TypeError):
        raise InputError(f"the BIDS validator failed on {bids_dir}: {proc.stderr.strip()[:500]}; "
                         "fix the dataset or pass --skip-bids-validation") from None
    errors = [i for i in issues if i.get("severity") == "error"]
    lines = sorted({f"  {i.get('code')}: {i.get('location', '')} {i.get('issueMessage') or ''}".rstrip()
                    for i in errors})
    block = "\n".join(lines[:30]) + (f"\n  ... and {len(lines) - 30} more" if len(lines) > 30 else "")
    raise InputError(f"{bids_dir} is not a valid BIDS dataset ({len(errors)} errors); fix them or pass "
                     f"--skip-bids-validation:\n{block}")


def _dataset_signature(bids_dir: Path) -> str:
    """Hash of the dataset's location and of every file's relative path, size and modification time."""
    digest = hashlib.sha256(f"{bids_dir.resolve()}\n".encode())
    for root, dirs, files in os.walk(bids_dir):
        dirs[:] = sorted(d for d in dirs if d not in ("derivatives", "sourcedata") and not d.startswith("."))
        for name in sorted(files):
            stat = os.stat(os.path.join(root, name))
            digest.update(f"{os.path.relpath(os.path.join(root, name), bids_dir)}|{stat.st_size}|"
                          f"{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def load_layout(bids_dir: Path, work_dir: Path):
    """Index ``bids_dir`` with pybids, caching the index in ``work_dir/pybids_db``.

    Each state of the dataset (:func:`_dataset_signature`) has its own index
    folder, built once and then only read, so any number of concurrent runs
    (a job array sharing one work folder) can use it. The first run to need an
    index builds it in a temporary folder under a lock and renames it into
    place; the others wait for the lock and read it. Indexes of earlier states
    of the dataset are deleted then.
    """
    from bids import BIDSLayout

    cache = Path(work_dir) / "pybids_db"
    db = cache / _dataset_signature(bids_dir)[:20]
    if not (db / "layout_index.sqlite").is_file():
        with file_lock(cache / ".lock"):
            if not (db / "layout_index.sqlite").is_file():
                for stale in cache.iterdir():  # earlier dataset states, and builds a killed run left
                    if stale.is_dir():
                        shutil.rmtree(stale)
                    elif stale.name != ".lock":
                        stale.unlink()
                build = Path(tempfile.mkdtemp(prefix=".build-", dir=cache))
                try:
                    built = BIDSLayout(str(bids_dir), validate=False, database_path=str(build), reset_database=True)
                    built.connection_manager.session.close()
                    built.connection_manager.engine.dispose()
                    os.rename(build, db)
                except BaseException:
                    shutil.rmtree(build, ignore_errors=True)
                    raise
    return BIDSLayout(str(bids_dir), validate=False, database_path=str(db))


@dataclass(frozen=True)
class T1wInput:
    """One T1w image to process: a subject, an optional session, a file."""

    subject: str
    session: str | None
    path: Path

    @property
    def key(self) -> str:
        """``sub-01`` or ``sub-01_ses-02``: the prefix of every output file name."""
        return scan_key(self.subject, self.session)

    def relative_to(self, bids_dir: Path) -> str:
        """Path of the input relative to the dataset root (for ``Sources``)."""
        return self.path.relative_to(bids_dir).as_posix()


def collect_t1w(layout, participant_labels: tuple[str, ...] = (), session_labels: tuple[str, ...] = ()
                ) -> list[T1wInput]:
    """T1w images per subject and session.

    Where a session holds several T1w runs, the first run is used and the others
    are logged.

    Raises
    ------
    InputError
        For participant labels not in the dataset, and for selected subjects
        without any T1w image.
    """
    available = set(layout.get_subjects())
    subjects = [normalize_label(s, "sub") for s in participant_labels] or sorted(available)
    unknown = [s for s in subjects if s not in available]
    if unknown:
        raise InputError(f"participant label(s) {', '.join('sub-' + s for s in unknown)} not found in "
                         f"{layout.root}; available: {', '.join(sorted(available)[:10]) or 'none'}")
    sessions = [normalize_label(s, "ses") for s in session_labels]
    inputs: list[T1wInput] = []
    for subject in subjects:
        query = {"subject": subject, "suffix": "T1w", "extension": list(NIFTI_EXTENSIONS), "datatype": "anat"}
        if sessions:
            query["session"] = sessions
        files = sorted(layout.get(return_type="file", **query))
        if not files:
            where = f" in session(s) {', '.join(sessions)}" if sessions else ""
            raise InputError(f"sub-{subject} has no T1w image{where} under {layout.root}/sub-{subject}; add "
                             f"anat/sub-{subject}_T1w.nii.gz or drop it from --participant-label")
        by_session: dict[str | None, list[str]] = {}
        for f in files:
            by_session.setdefault(layout.parse_file_entities(f).get("session"), []).append(f)
        for session, runs in sorted(by_session.items(), key=lambda kv: kv[0] or ""):
            if len(runs) > 1:
                LOGGER.warning("sub-%s%s has %d T1w runs; using %s", subject,
                               f" ses-{session}" if session else "", len(runs), os.path.basename(runs[0]))
            inputs.append(T1wInput(subject, session, Path(runs[0])))
    return inputs


def read_participants(bids_dir: Path, column: str | None = None) -> pd.DataFrame:
    """``participants.tsv`` indexed by subject label (without ``sub-``).

    Parameters
    ----------
    column : str, optional
        A column that must exist (the diagnosis column); an input error names
        the file and the columns that do exist otherwise.
    """
    path = participants_table(bids_dir)
    if not path.is_file():
        raise InputError(f"{path} is missing: add it with a participant_id and a diagnosis column")
    table = pd.read_csv(path, sep="\t", dtype=str, na_values=["n/a"], keep_default_na=False)
    if "participant_id" not in table.columns:
        raise InputError(f"{path} has no participant_id column")
    if column is not None and column not in table.columns:
        raise InputError(f"{path} has no column {column!r} (columns: {', '.join(table.columns)}); "
                         "set --label-column")
    table.index = [normalize_label(p, "sub") for p in table["participant_id"]]
    return table


def file_hash(path: Path, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file's content (recorded in sidecars to detect changed inputs)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def container_info() -> dict | None:
    """The container this process runs in, from the variables the images set."""
    image = os.environ.get("ADHEAT_CONTAINER_IMAGE")
    if os.environ.get("APPTAINER_CONTAINER") or os.environ.get("SINGULARITY_CONTAINER"):
        kind = "singularity"
        image = image or os.environ.get("APPTAINER_CONTAINER") or os.environ.get("SINGULARITY_CONTAINER")
    else:
        kind = os.environ.get("ADHEAT_CONTAINER_TYPE")
    if not kind and not image:
        return None
    return {"Type": kind or "docker", "Tag": image or "unknown"}


def software_versions() -> dict[str, str]:
    """Versions of adheat and of the libraries whose results it reports."""
    from importlib.metadata import PackageNotFoundError, version

    versions = {"adheat": __version__, "python": sys.version.split()[0]}
    for dist in ("torch", "antspyx", "fireants", "deepbet", "captum", "scikit-learn", "nibabel", "nilearn",
                 "templateflow", "pybids", "numpy", "scipy"):
        try:
            versions[dist] = version(dist)
        except PackageNotFoundError:
            continue
    return versions


class Derivatives:
    """The adheat BIDS-Derivatives dataset rooted at ``output_dir``.

    Parameters
    ----------
    output_dir : Path
        Root of the derivatives dataset.
    bids_dir : Path
        The raw dataset (linked as ``raw`` in ``DatasetLinks`` and in ``Sources``).
    """

    def __init__(self, output_dir: Path, bids_dir: Path):
        self.root = Path(output_dir)
        self.bids_dir = Path(bids_dir)

    def lock(self):
        """Context manager holding the lock for rewriting a file that concurrent runs share.

        Runs of one job array write the same output folder; every file more
        than one of them rewrites (``dataset_description.json``,
        ``.bidsignore``, ``group/preproc_qc.tsv``, ``logs/CITATION.*``) is
        read, computed and written while holding ``logs/.lock``.
        """
        return file_lock(self.root / "logs" / ".lock")

    def initialize(self) -> None:
        """Write ``dataset_description.json`` and ``.bidsignore`` (idempotent, safe for concurrent runs)."""
        self.root.mkdir(parents=True, exist_ok=True)
        generated = {"Name": "adheat", "Version": __version__,
                     "CodeURL": "https://github.com/adheat/adheat",
                     "Description": "T1w preprocessing, cross-validated 3D CNNs and their heatmaps"}
        container = container_info()
        if container:
            generated["Container"] = container
        description = {
            "Name": "adheat: CNN heatmaps of Alzheimer's disease",
            "BIDSVersion": "1.10.0",
            "DatasetType": "derivative",
            "GeneratedBy": [generated],
            "DatasetLinks": {"raw": self.bids_dir.resolve().as_uri()},
            "SourceDatasets": [{"URL": self.bids_dir.resolve().as_uri()}],
        }
        path = dataset_description(self.root)
        ignore = self.root / ".bidsignore"
        with self.lock():
            if not path.is_file() or read_json(path) != json.loads(json.dumps(description)):
                write_json(path, description)
            if not ignore.is_file() or ignore.read_text() != "\n".join(BIDSIGNORE) + "\n":
                write_text(ignore, "\n".join(BIDSIGNORE) + "\n")

    #: Build a BIDS file name from entities in canonical order (:func:`adheat_app.layout.filename`).
    filename = staticmethod(filename)

    def subject_path(self, subject: str, session: str | None, suffix: str, extension: str = NIFTI,
                     datatype: str = "anat", **entities) -> Path:
        """Path of a per-scan output (:func:`adheat_app.layout.subject_path`)."""
        return subject_path(self.root, subject, session, suffix, extension, datatype, **entities)

    def group_path(self, suffix: str, extension: str = NIFTI, **entities) -> Path:
        """Path of a group-level output under ``group/`` (:func:`adheat_app.layout.group_path`)."""
        return group_path(self.root, suffix, extension, **entities)

    def source_uri(self, path: Path) -> str:
        """BIDS URI of an input file (``bids:raw:sub-01/anat/...``) or an output file (``bids::...``)."""
        path = Path(path).absolute()
        for prefix, root in (("bids::", self.root.absolute()), ("bids:raw:", self.bids_dir.absolute())):
            try:
                return prefix + path.relative_to(root).as_posix()
            except ValueError:
                continue
        return path.as_uri()

    def write_image(self, path: Path, img: nib.Nifti1Image, sidecar: dict) -> Path:
        """Write a NIfTI image and its JSON sidecar atomically (sidecar last, as the completion mark)."""
        save_nifti(path, img)
        write_json(sidecar_path(path), sidecar)
        return path


def is_complete(path: Path, **expected) -> bool:
    """Whether ``path`` and its sidecar exist and the sidecar records the ``expected`` values.

    Used to skip work on reruns: e.g. ``is_complete(out, InputHash=h)`` is
    False when the input changed since the output was made.
    """
    side = sidecar_path(path)
    if not (Path(path).is_file() and side.is_file()):
        return False
    try:
        recorded = read_json(side)
    except (OSError, ValueError):
        return False
    return all(recorded.get(k) == v for k, v in expected.items())
