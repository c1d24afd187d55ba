"""Parent anatomies of ``adheat-simulate --anatomy``: bad files are refused, a real head makes a usable cohort.

The real-head test builds a tiny cohort (8 subjects: the fewest 2 folds accept; 6 mm) from the shared whole-head
scan through the command line, then runs ``adheat participant group`` on it; it skips where ``../shared/data`` is
absent. Its time was measured only on a machine whose 2 cores 7 jobs shared (see the report).
"""

from __future__ import annotations

import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from adheat_app.simulate import cli, parents
from conftest import shared_data_or_skip


def _run(*args) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, env=env, timeout=1200)


def _bad_files(folder):
    """One file per way an --anatomy input can be unusable, and the words its error must contain."""
    text = folder / "notes.nii.gz"
    text.write_text("not an image")
    four_d = folder / "series.nii.gz"
    nib.save(nib.Nifti1Image(np.random.default_rng(0).random((8, 8, 8, 3)).astype(np.float32), np.eye(4)), four_d)
    empty = folder / "empty.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((16, 16, 16), np.int16), np.eye(4)), empty)
    blob = np.zeros((40, 40, 40), np.uint8)
    blob[15:25, 15:25, 15:25] = 200  # a 1 ml cube: no brain
    cube = folder / "cube.nii.gz"
    nib.save(nib.Nifti1Image(blob, np.eye(4)), cube)
    return [(text, "cannot read"), (four_d, "4D"), (empty, "empty"), (cube, "no brain found"),
            (folder / "missing.nii.gz", "no such file")]


def test_bad_anatomy_files_exit_2_naming_the_file_and_write_nothing(tmp_path, capsys):
    for path, words in _bad_files(tmp_path):
        out = tmp_path / "out"
        code = cli.main([str(out), "--resolution", "8", "--n-subjects", "2", "--anatomy", str(path)])
        lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert code == 2 and len(lines) == 1, lines
        assert str(path) in lines[0] and words in lines[0], lines[0]
        assert not out.exists()


def test_parents_are_assigned_balanced_by_diagnosis():
    from adheat_app.simulate import plan_cohort

    specs = plan_cohort(21, seed=4, n_mci=5, anatomy=("a", "b", "c"))
    for group in ("AD", "CN", "MCI"):
        counts = [sum(s.diagnosis == group and s.anatomy == name for s in specs) for name in "abc"]
        assert max(counts) - min(counts) <= 1, (group, counts)


def test_builtin_parents_are_shipped_by_installed_packages():
    for name in parents.BUILTIN:
        assert parents.builtin_path(name).is_file(), name
    assert set(parents.DEFAULT_ANATOMY) <= set(parents.BUILTIN)


@pytest.mark.slow
@pytest.mark.real_data
def test_a_real_whole_head_makes_a_cohort_both_levels_run_on(tmp_path, tf_home):
    """chris_t1 (whole head, uint8, 0.88 mm, native scanner space) as the only parent: deepbet, N4, affine + SyN
    to the template; subjects' truth lies in its anatomy, twins are written, and both adheat levels run."""
    head = shared_data_or_skip() / "real" / "chris_t1.nii.gz"
    bids = tmp_path / "bids"
    proc = _run("-m", "adheat_app.simulate", bids, "--anatomy", head, "--n-subjects", "8", "--resolution", "6",
                "--seed", "2", "--twins")
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = pd.read_csv(bids / "participants.tsv", sep="\t")
    assert table["anatomy"].eq("christ1").all()
    root = bids / "derivatives" / "simulation"
    parent = next((root / "parents" / "christ1").glob("*_desc-brain_T1w.nii.gz"))
    labels = np.asarray(nib.load(next((root / "parents" / "christ1").glob("*_dseg.nii.gz"))).dataobj)
    brain = np.asarray(nib.load(parent).dataobj) > 0
    assert 800 < brain.sum() * 6**3 / 1000 < 2000 and np.isin(labels[brain], [0], invert=True).mean() > 0.6
    assert list((root / "parents" / "christ1").glob("*_xfm.h5"))
    assert len(list(root.glob("sub-*/anat/*_desc-twin_T1w.nii.gz"))) == 4
    out = tmp_path / "out"
    proc = _run("-m", "adheat_app", bids, out, "participant", "group", "--resolution", "6", "--folds", "2",
                "--methods", "IG", "--n-bootstrap", "20", "--nprocs", "2", "--omp-nthreads", "1",
                "--skip-bids-validation")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "group.html").is_file() and (out / "group" / "cv_metrics.tsv").is_file()
    assert len(list(out.glob("sub-*/anat/*_desc-IG_heatmap.nii.gz"))) == 8
