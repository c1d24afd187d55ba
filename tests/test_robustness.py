"""Runs that share an output folder, runs that are killed, and runs that cannot write.

A job array starts one ``participant --participant-label XX`` run per subject,
all writing one output folder (and, with the default ``--work-dir``, one work
folder): no run may crash on another's files, and no shared file may lose a
run's update. A run killed with SIGKILL at any point and started again
completes with the outputs of an uninterrupted run. A full disk or a read-only
output folder ends the run with exit 1, one line, and no half-written file.
"""

from __future__ import annotations

import errno
import json
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from adheat_app.bids import BIDSIGNORE, Derivatives, load_layout
from adheat_app.simulate import simulate_cohort
from conftest import REPO, assert_same_outputs, write_tiny_bids

FAST_PARTICIPANT = ["--skull-strip", "skip", "--registration", "affine", "--resolution", "4",
                    "--skip-bids-validation", "--nprocs", "1", "--omp-nthreads", "1"]


def adheat_process(*args: str | Path, env: dict | None = None) -> subprocess.Popen:
    """Start ``adheat`` (this tree's) in a subprocess of its own process group."""
    environment = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "adheat_app", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=environment, start_new_session=True)


def leftovers(root: Path) -> list[Path]:
    """Temporary files of interrupted atomic writes, and index builds, under ``root``."""
    return [p for p in root.rglob(".*") if ".tmp" in p.name or p.name.startswith(".build-")]


# --------------------------------------------------------------------------- concurrent runs, one output folder

def _index_subjects(bids_dir: str, work: str, queue) -> None:
    queue.put(sorted(load_layout(Path(bids_dir), Path(work)).get_subjects()))


def test_concurrent_runs_build_the_pybids_index_once(tmp_path):
    """8 processes ask for the index of one dataset at once: one builds it, all read it."""
    root = write_tiny_bids(tmp_path / "bids", {f"{i:02d}": "AD" for i in range(1, 7)}, shape=(4, 4, 4))
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    workers = [context.Process(target=_index_subjects, args=(str(root), str(tmp_path / "work"), queue))
               for _ in range(8)]
    for worker in workers:
        worker.start()
    results = [queue.get(timeout=120) for _ in workers]
    for worker in workers:
        worker.join(timeout=60)
    assert [w.exitcode for w in workers] == [0] * 8
    assert results == [[f"{i:02d}" for i in range(1, 7)]] * 8
    assert len(list((tmp_path / "work" / "pybids_db").glob("*/layout_index.sqlite"))) == 1
    assert not leftovers(tmp_path / "work")


@pytest.fixture(scope="module")
def cohort8(tmp_path_factory) -> Path:
    """8 simulated subjects at 4 mm."""
    return simulate_cohort(tmp_path_factory.mktemp("cohort8") / "bids", n_subjects=8, resolution=4.0, seed=2)


@pytest.mark.slow
@pytest.mark.parametrize("work", ["default", "shared"])
def test_eight_concurrent_participant_runs_share_one_output_folder(cohort8, tmp_path, work):
    """As a job array runs them: 8 single-subject runs at once, with the default and with one shared work folder."""
    out = tmp_path / "out"
    extra = ["--work-dir", tmp_path / "scratch"] if work == "shared" else []
    runs = [adheat_process(cohort8, out, "participant", "--participant-label", f"{i:02d}", *FAST_PARTICIPANT, *extra)
            for i in range(1, 9)]
    results = [(run.wait(timeout=900), run.stderr.read()) for run in runs]
    for code, err in results:
        assert code == 0, err[-3000:]
    qc = pd.read_csv(out / "group" / "preproc_qc.tsv", sep="\t", dtype={"subject": str})
    assert sorted(qc["subject"]) == [f"{i:02d}" for i in range(1, 9)]  # no run's row was lost
    description = json.loads((out / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative" and description["GeneratedBy"][0]["Name"] == "adheat"
    assert (out / ".bidsignore").read_text() == "\n".join(BIDSIGNORE) + "\n"
    assert "Anatomical preprocessing" in (out / "logs" / "CITATION.md").read_text()
    assert (out / "logs" / "CITATION.bib").stat().st_size > 100
    assert len(list((out / "logs").glob("adheat-*.log"))) == 8
    assert len(list((out / "logs").glob("config-*.toml"))) == 8
    assert not list((out / "logs").glob("crash-*"))
    for i in range(1, 9):
        assert len(list((out / f"sub-{i:02d}" / "anat").glob("*_desc-preproc_T1w.nii.gz"))) == 1
        assert (out / f"sub-{i:02d}.html").is_file()
    work_dir = tmp_path / "scratch" if work == "shared" else out / "work"
    assert len(list((work_dir / "pybids_db").glob("*/layout_index.sqlite"))) == 1
    assert not leftovers(out) and not leftovers(work_dir)
    notices = [line for _, err in results for line in err.splitlines() if "TemplateFlow" in line]
    assert len(notices) <= 8  # at most once per run (none where the template is cached)
    assert all("http" not in line.lower() for line in notices)


# --------------------------------------------------------------------------- a full disk, a read-only folder

DISK_FULL_SITE = '''
import errno
import nibabel

def _full_disk_save(img, filename, *args, **kwargs):
    with open(filename, "wb") as handle:  # the disk fills half-way through the file
        handle.write(b"\\x1f\\x8b" + bytes(4096))
    raise OSError(errno.ENOSPC, "No space left on device", str(filename))

nibabel.save = _full_disk_save
'''


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("adheat: error:")]


def test_full_disk_ends_the_run_with_one_line_and_no_half_written_nifti(tmp_path):
    """Every NIfTI write of the run (the spawned preprocessing workers too) hits ENOSPC half-way."""
    bids_dir = simulate_cohort(tmp_path / "bids", n_subjects=2, resolution=4.0, seed=1)
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(DISK_FULL_SITE)
    out = tmp_path / "out"
    run = adheat_process(bids_dir, out, "participant", *FAST_PARTICIPANT,
                         env={"PYTHONPATH": f"{site}{os.pathsep}{REPO}"})
    code, err = run.wait(timeout=600), run.stderr.read()
    assert code == 1, err
    [line] = _error_lines(err)
    assert "No space left on device" in line and "free space" in line and "rerun the same command" in line
    assert "Traceback" not in err
    assert not list(out.rglob("*.nii*")), "a half-written NIfTI was left behind"
    assert not leftovers(out)


def _make_read_only(folder: Path) -> None:
    """Read-only for this process: permissions for a normal user, a read-only bind mount for root."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        return
    done = subprocess.run(["mount", "--bind", str(folder), str(folder)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"running as root and cannot bind-mount {folder} read-only: {done.stderr.decode().strip()}")
    subprocess.run(["mount", "-o", "remount,bind,ro", str(folder)], check=True)


@pytest.fixture
def read_only_folder(tmp_path):
    folder = tmp_path / "readonly"
    folder.mkdir()
    _make_read_only(folder)
    yield folder
    if os.geteuid() == 0:
        subprocess.run(["umount", str(folder)], check=False)
    folder.chmod(0o755)


def test_read_only_output_folder_exits_1_with_one_line(tmp_path, read_only_folder):
    bids_dir = write_tiny_bids(tmp_path / "bids", {"01": "AD", "02": "CN"})
    run = adheat_process(bids_dir, read_only_folder, "participant", *FAST_PARTICIPANT)
    code, err = run.wait(timeout=300), run.stderr.read()
    assert code == 1, err
    [line] = _error_lines(err)
    assert str(read_only_folder) in line and ("Read-only file system" in line or "Permission denied" in line)
    assert "Traceback" not in err
    assert not any(read_only_folder.iterdir())


# --------------------------------------------------------------------------- SIGKILL at any stage, then rerun

GROUP = ["group", "--resolution", "4", "--skip-bids-validation", "--nprocs", "1", "--omp-nthreads", "1", "--seed", "0",
         "--folds", "2", "--steps", "0", "--epochs", "4", "--batch-size", "4", "--methods", "IG", "Saliency",
         "--n-bootstrap", "50"]
#: Files whose appearance marks a stage of the group level: training (a checkpoint after an epoch), heatmaps
#: (the first subject map), evaluation (the first group-average map).
STAGE_MARKS = {"training": "models/*/fold-*/checkpoint.pt", "heatmaps": "sub-*/anat/*_heatmap.nii.gz",
               "evaluation": "group/*/*_stat-mean_heatmap.nii.gz"}


def _kill_when(run: subprocess.Popen, out: Path, pattern: str) -> bool:
    """SIGKILL the run's whole process group as soon as ``pattern`` matches a file; False if it ended first."""
    import signal
    import time

    while run.poll() is None:
        if any(out.glob(pattern)):
            os.killpg(run.pid, signal.SIGKILL)
            run.wait()
            return True
        time.sleep(0.02)
    return False


@pytest.mark.slow
def test_sigkill_during_training_heatmaps_and_evaluation_then_rerun_gives_the_same_outputs(tmp_path):
    from conftest import make_preprocessed_cohort

    runs = {}
    for name in ("reference", "killed"):
        config, *_ = make_preprocessed_cohort(tmp_path / name, n_subjects=8, resolution=4.0, seed=0)
        runs[name] = (config.bids_dir, config.output_dir)
    bids_dir, out = runs["reference"]
    reference = adheat_process(bids_dir, out, *GROUP)
    assert reference.wait(timeout=900) == 0, reference.stderr.read()[-3000:]
    bids_dir, out = runs["killed"]
    for stage, pattern in STAGE_MARKS.items():
        assert _kill_when(adheat_process(bids_dir, out, *GROUP), out, pattern), f"the run ended before {stage}"
    final = adheat_process(bids_dir, out, *GROUP)
    assert final.wait(timeout=900) == 0, final.stderr.read()[-3000:]
    assert not leftovers(out)
    compared = assert_same_outputs(out, runs["reference"][1])
    assert any(name.endswith("_heatmap.nii.gz") for name in compared) and "group/overlap.tsv" in compared
