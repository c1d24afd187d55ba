"""The cluster path on a real scheduler: ``scripts/submit_all.sh`` on a single-node Slurm.

A real Slurm (controller, compute node, munge; :mod:`slurm_cluster`) runs the
three chained jobs with the bare-metal runtime (``ADHEAT_RUNTIME=none``: the
installed ``adheat``) on a tiny 4 mm simulated cohort: one participant task per
subject, one fold job per fold, the collecting group job, chained with
``afterok``. The outputs must equal those of a plain ``participant group`` run.
A failing participant task must stop the chain, and its log must say which
task failed. The tests skip, saying why, where Slurm cannot be started (not
root, packages not installed). Training runs 2 epochs: the test checks the
orchestration, not learning.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from adheat_app.simulate import simulate_cohort
from conftest import REPO, assert_same_outputs
from slurm_cluster import SlurmCluster, unavailable

pytestmark = pytest.mark.slow

ADHEAT = Path(sys.executable).parent / "adheat"
CONFIG = """\
[execution]
resolution = 4.0
seed = 3
omp_nthreads = 1
skip_bids_validation = true
[preprocessing]
registration = "affine"
skull_strip = "skip"
[training]
epochs = 2
steps = 0
batch_size = 4
[heatmaps]
methods = ["Saliency", "IG"]
ig_steps = 8
[evaluation]
n_bootstrap = 20
"""


@pytest.fixture(scope="module")
def cluster():
    why = unavailable()
    if why:
        pytest.skip(f"no Slurm cluster: {why}")
    if not ADHEAT.is_file():
        pytest.skip(f"the adheat console script is not installed next to {sys.executable} (pip install -e .)")
    slurm = SlurmCluster(cpus=2)
    try:
        slurm.start()
    except (subprocess.CalledProcessError, RuntimeError) as exc:
        slurm.stop()
        detail = exc.stderr if isinstance(exc, subprocess.CalledProcessError) else exc
        pytest.skip(f"Slurm could not be started here: {detail}")
    yield slurm
    slurm.stop()


def submit_all(cluster: SlurmCluster, bids_dir: Path, out: Path, folds: int = 2) -> tuple[dict[str, str], Path]:
    """Run scripts/submit_all.sh with :data:`CONFIG` as a user with a venv install would, wait for every job.

    Returns the three job ids and the config file.
    """
    config = out.parent / "run.toml"
    config.write_text(CONFIG)
    env = {"ADHEAT_RUNTIME": "none", "BIDS_DIR": str(bids_dir), "OUTPUT_DIR": str(out), "ADHEAT_FOLDS": str(folds),
           "ADHEAT_SBATCH_OPTS": "--cpus-per-task=1 --mem=2G --time=30", "ADHEAT_GPU_OPTS": "",
           "PATH": f"{ADHEAT.parent}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(REPO)}
    proc = cluster.run("bash", str(REPO / "scripts" / "submit_all.sh"), "--config-file", str(config),
                       env=env, cwd=str(out.parent))
    ids = dict(re.findall(r"(participant|fold|group): (\d+)", proc.stdout))
    assert set(ids) == {"participant", "fold", "group"}, proc.stdout + proc.stderr
    cluster.wait_idle(timeout=1200)
    return ids, config


def test_submit_all_on_slurm_equals_a_plain_run(cluster, tmp_path):
    bids_dir = simulate_cohort(tmp_path / "bids", n_subjects=8, resolution=4.0, seed=3, effect_size=0.4,
                               atrophy_model="darkening")
    out = tmp_path / "slurm_out"
    ids, config = submit_all(cluster, bids_dir, out)
    logs = out / "logs" / "slurm"
    for name, job in ids.items():
        assert cluster.job_state(job).startswith("COMPLETED"), (name, cluster.job_state(job))
    assert len(list(logs.glob(f"adheat-participant-{ids['participant']}_*.log"))) == 8
    assert len(list(logs.glob(f"adheat-fold-{ids['fold']}_*.log"))) == 2
    assert "failed with exit code" not in "".join(p.read_text() for p in logs.glob("*.log"))
    assert (out / "group.html").is_file()

    plain = tmp_path / "plain_out"
    proc = subprocess.run([str(ADHEAT), str(bids_dir), str(plain), "participant", "group", "--config-file",
                           str(config), "--folds", "2", "--device", "cpu"], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    compared = assert_same_outputs(out, plain)
    assert sum(name.endswith("_heatmap.nii.gz") for name in compared) >= 16 and "group/overlap.tsv" in compared


def test_a_failing_participant_task_stops_the_chain_and_its_log_says_which(cluster, tmp_path):
    bids_dir = simulate_cohort(tmp_path / "bids", n_subjects=2, resolution=4.0, seed=4)
    broken = bids_dir / "sub-02" / "anat" / "sub-02_T1w.nii.gz"
    broken.write_bytes(broken.read_bytes()[:2000])
    out = tmp_path / "out"
    ids, _ = submit_all(cluster, bids_dir, out)
    logs = out / "logs" / "slurm"
    first = (logs / f"adheat-participant-{ids['participant']}_1.log").read_text()
    second = (logs / f"adheat-participant-{ids['participant']}_2.log").read_text()
    assert "failed with exit code" not in first
    assert "slurm_adheat.sh: participant task 2 (sub-02) of job" in second
    assert second.rstrip().endswith("failed with exit code 1")
    for name in ("fold", "group"):
        state = cluster.job_state(ids[name])
        assert state.startswith("CANCELLED") or "DependencyNeverSatisfied" in state, (name, state)
    assert not list(logs.glob("adheat-fold-*")) and not list(logs.glob("adheat-group-*"))
    assert not (out / "models").exists() and not (out / "group.html").exists()
