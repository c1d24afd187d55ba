"""A real single-node Slurm cluster for tests, started as root from Debian's packages.

The set-up (Debian ``slurm-wlm`` + ``munge``, Slurm 22.05; ``.ci/run`` installs
them where it runs as root):

* munge: a 1024-byte random key owned by ``munge``, mode 0400, and ``munged``
  started as the ``munge`` user (``runuser -u munge -- munged``). Here its key,
  socket, pid, seed and log live in a private folder, so a system munged is
  never touched.
* Slurm: ``slurmctld`` and ``slurmd`` as root with a ``slurm.conf`` of one node
  (``NodeName=<hostname -s> CPUs=<cpus> RealMemory=<MB>``),
  ``ProctrackType=proctrack/linuxproc``, ``TaskPlugin=task/none`` (no cgroups
  needed), ``SelectType=select/cons_tres`` (several jobs share the node),
  ``SlurmUser=root``, ``AuthType=auth/munge`` with ``AuthInfo=socket=<private
  socket>``, and free TCP ports. ``SLURM_CONF`` points daemons and clients at
  that file. Measured: ``sbatch --array=1-3`` runs two tasks at a time on 2
  CPUs, and a job with ``--dependency=afterok:<array>`` starts after them.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "sinfo")


def unavailable() -> str | None:
    """Why a Slurm cluster cannot be started here (None when it can)."""
    if os.geteuid() != 0:
        return "starting munged, slurmctld and slurmd needs root"
    missing = [d for d in DAEMONS if shutil.which(d) is None]
    if missing:
        return (f"{', '.join(missing)} not installed (apt-get install slurm-wlm munge; .ci/run installs them "
                "where it runs as root)")
    try:
        pwd.getpwnam("munge")
    except KeyError:
        return "the munge user does not exist (the munge package creates it)"
    return None


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _memory_mb() -> int:
    with open("/proc/meminfo") as handle:
        total_kb = int(next(line for line in handle if line.startswith("MemTotal")).split()[1])
    return total_kb // 1024 // 2  # what the node offers jobs: half the machine


class SlurmCluster:
    """One controller and one compute node on this machine; :meth:`stop` ends both and munged."""

    def __init__(self, cpus: int = 2):
        self.root = Path(tempfile.mkdtemp(prefix="adheat-slurm-", dir="/tmp"))
        self.root.chmod(0o755)  # munged runs as munge and must reach its folder
        self.host = socket.gethostname().split(".")[0]
        self.cpus = cpus
        self.conf = self.root / "slurm.conf"
        self.munge = self.root / "munge"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self._pids: list[Path] = []

    def start(self, timeout: float = 60.0) -> SlurmCluster:
        """Write the key and configuration, start munged, slurmctld and slurmd, wait for the node to be idle."""
        munge = pwd.getpwnam("munge")
        self.munge.mkdir()
        key = self.munge / "munge.key"
        key.write_bytes(os.urandom(1024))
        for path in (self.munge, key):
            os.chown(path, munge.pw_uid, munge.pw_gid)
        key.chmod(0o400)
        self.munge.chmod(0o711)  # munged: clients must reach the socket, nobody may list or write the folder
        sock = self.munge / "munge.socket"
        subprocess.run(["runuser", "-u", "munge", "--", "munged", f"--socket={sock}", f"--key-file={key}",
                        f"--pid-file={self.munge / 'munged.pid'}", f"--log-file={self.munge / 'munged.log'}",
                        f"--seed-file={self.munge / 'munged.seed'}"], check=True, capture_output=True, timeout=30)
        self._pids.append(self.munge / "munged.pid")
        ctld_port, node_port = _free_ports(2)
        for folder in ("state", "spool"):
            (self.root / folder).mkdir()
        self.conf.write_text("\n".join([
            "ClusterName=adheattest", f"SlurmctldHost={self.host}", f"SlurmctldPort={ctld_port}",
            f"SlurmdPort={node_port}", "AuthType=auth/munge", "CredType=cred/munge", f"AuthInfo=socket={sock}",
            "SlurmUser=root", "SlurmdUser=root", "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none",
            "SelectType=select/cons_tres", "SelectTypeParameters=CR_CPU", "SchedulerType=sched/backfill",
            "MpiDefault=none", "ReturnToService=2", "JobCompType=jobcomp/none",
            "AccountingStorageType=accounting_storage/none", "MinJobAge=600", "SchedulerParameters=sched_interval=2",
            f"StateSaveLocation={self.root / 'state'}", f"SlurmdSpoolDir={self.root / 'spool'}",
            f"SlurmctldPidFile={self.root / 'slurmctld.pid'}", f"SlurmdPidFile={self.root / 'slurmd.pid'}",
            f"SlurmctldLogFile={self.root / 'slurmctld.log'}", f"SlurmdLogFile={self.root / 'slurmd.log'}",
            f"NodeName={self.host} CPUs={self.cpus} RealMemory={_memory_mb()} State=UNKNOWN",
            "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP", ""]))
        subprocess.run(["slurmctld", "-i"], env=self.env, check=True, capture_output=True, timeout=30)
        self._pids.append(self.root / "slurmctld.pid")
        subprocess.run(["slurmd"], env=self.env, check=True, capture_output=True, timeout=30)
        self._pids.append(self.root / "slurmd.pid")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.run("sinfo", "-h", "-N", "-o", "%T", check=False).stdout.strip()
            if state.startswith("idle"):
                return self
            time.sleep(0.5)
        raise RuntimeError(f"the Slurm node did not come up (state {state!r}); see {self.root}/slurm*.log")

    def run(self, *args: str, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
        """Run a Slurm client command against this cluster."""
        env = {**self.env, **kwargs.pop("env", {})}
        return subprocess.run(args, env=env, capture_output=True, text=True, check=check, timeout=60, **kwargs)

    def wait_idle(self, timeout: float) -> None:
        """Wait until no job is pending or running."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.run("squeue", "-h", "-o", "%i").stdout.strip():
                return
            time.sleep(1.0)
        raise TimeoutError(f"jobs still queued after {timeout} s:\n{self.run('squeue').stdout}")

    def job_state(self, job_id: str) -> str:
        """``JobState`` and ``Reason`` of a finished or cancelled job (kept for ``MinJobAge``)."""
        text = self.run("scontrol", "show", "job", job_id, check=False).stdout
        fields = dict(item.split("=", 1) for item in text.split() if "=" in item)
        return f"{fields.get('JobState', 'UNKNOWN')} {fields.get('Reason', '')}".strip()

    def stop(self) -> None:
        """Stop slurmd, slurmctld and munged (by their pid files), then remove the folder."""
        self.run("scancel", "--user=root", check=False)
        for pid_file in reversed(self._pids):
            try:
                os.kill(int(pid_file.read_text().strip()), signal.SIGTERM)
            except (OSError, ValueError):
                continue
        time.sleep(1.0)
        shutil.rmtree(self.root, ignore_errors=True)
