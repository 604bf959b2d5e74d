"""A real Slurm: a throw-away single-node cluster (munged, slurmctld, slurmd on localhost) runs the
participant level of the tiny cohort through ``ferritin run --cluster slurm`` (dask-jobqueue), with one
worker job cancelled in the middle; the result is complete and identical to a local run, and no job is
left behind.  ``make test`` installs slurm-wlm and munge where it may (root with apt-get); elsewhere the
test is skipped with the reason.  ``deploy/README.md`` shows the configuration this writes."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

pytest.importorskip("ants")
pytest.importorskip("dask_jobqueue")

from conftest import FAST_STUDY, assert_same_outputs, stage_outputs  # noqa: E402

from ferritin.cohort.store import CohortStore  # noqa: E402

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
PROGRAMS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scancel", "sinfo")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _memory_mb() -> int:
    with open("/proc/meminfo") as f:
        total_kb = int(next(line for line in f if line.startswith("MemTotal")).split()[1])
    return int(total_kb / 1024 * 0.8)


def slurm_conf(root: Path, munge_socket: Path) -> str:
    """slurm.conf of a one-node cluster on localhost: no cgroups, accounting or MPI (a container has none)."""
    node = socket.gethostname().split(".")[0]
    return "\n".join([
        "ClusterName=ferritintest",
        f"SlurmctldHost={node}(127.0.0.1)",
        "SlurmUser=root", "SlurmdUser=root",
        f"SlurmctldPort={_free_port()}", f"SlurmdPort={_free_port()}",
        "AuthType=auth/munge", f"AuthInfo=socket={munge_socket}", "CredType=cred/munge",
        f"StateSaveLocation={root / 'state'}", f"SlurmdSpoolDir={root / 'spool'}",
        f"SlurmctldPidFile={root / 'slurmctld.pid'}", f"SlurmdPidFile={root / 'slurmd.pid'}",
        f"SlurmctldLogFile={root / 'slurmctld.log'}", f"SlurmdLogFile={root / 'slurmd.log'}",
        "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none", "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none", "MpiDefault=none", "ReturnToService=2",
        "SchedulerType=sched/backfill", "SelectType=select/cons_tres", "SelectTypeParameters=CR_Core",
        f"NodeName={node} NodeAddr=127.0.0.1 CPUs={os.cpu_count()} RealMemory={_memory_mb()} State=UNKNOWN",
        "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
    ]) + "\n"


class ThrowAwaySlurm:
    """munged, slurmctld and slurmd for one test module, all state under ``root``."""

    def __init__(self, root: Path):
        self.root = root
        for d in ("munge", "state", "spool"):
            (root / d).mkdir(parents=True)
        key = root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        (root / "munge").chmod(0o711)
        self.munge_socket = root / "munge" / "munge.sock"
        self.conf = root / "slurm.conf"
        self.conf.write_text(slurm_conf(root, self.munge_socket))
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        subprocess.run(["munged", "--force", f"--socket={self.munge_socket}", f"--key-file={key}",
                        f"--log-file={root / 'munged.log'}", f"--pid-file={root / 'munge' / 'munged.pid'}",
                        f"--seed-file={root / 'munge' / 'munged.seed'}"], check=True, env=self.env)
        subprocess.run(["slurmctld", "-f", str(self.conf)], check=True, env=self.env)
        subprocess.run(["slurmd", "-f", str(self.conf)], check=True, env=self.env)
        for _ in range(300):
            if self.run("sinfo", "-h", "-o", "%t").strip() == "idle":
                return
            time.sleep(0.2)
        raise RuntimeError("the node never became idle:\n" + (root / "slurmctld.log").read_text()[-2000:])

    def run(self, *cmd: str) -> str:
        return subprocess.run(cmd, env=self.env, capture_output=True, text=True, check=True).stdout

    def jobs(self) -> list[tuple[str, str]]:
        """(job id, state) of every job in the queue."""
        return [tuple(line.split()) for line in self.run("squeue", "-h", "-o", "%i %t").splitlines() if line.strip()]

    def close(self) -> None:
        subprocess.run(["scancel", "--user", str(os.getuid())], env=self.env, capture_output=True)
        for name in ("slurmd.pid", "slurmctld.pid", "munge/munged.pid"):
            pid_file = self.root / name
            if pid_file.exists():
                try:
                    os.kill(int(pid_file.read_text().split()[0]), signal.SIGTERM)
                except (ProcessLookupError, ValueError):
                    pass


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    missing = [p for p in PROGRAMS if shutil.which(p) is None]
    if missing:
        pytest.skip(f"Slurm is not installed ({', '.join(missing)} missing): make test installs slurm-wlm and munge "
                    "with apt-get where it runs as root")
    if os.getuid() != 0:
        pytest.skip("the throw-away Slurm runs its daemons as root")
    cluster = ThrowAwaySlurm(tmp_path_factory.mktemp("slurm"))
    yield cluster
    cluster.close()


def test_run_on_slurm_survives_a_cancelled_worker_job(slurm, tiny_bids, local_reference, tmp_path):
    root, _ = tiny_bids
    subjects, reference = local_reference

    spec_file = tmp_path / "fast.yaml"
    spec_file.write_text(yaml.safe_dump(FAST_STUDY))
    out = tmp_path / "slurm-out"
    store = out / "cohort.zarr"
    env = {**slurm.env, "DASK_FERRITIN__CLUSTER__JOBQUEUE__MEMORY": "2GiB",
           "DASK_FERRITIN__CLUSTER__JOBQUEUE__WALLTIME": "00:30:00",
           "DASK_FERRITIN__CLUSTER__JOBQUEUE__LOCAL_DIRECTORY": str(tmp_path / "worker-space")}
    cmd = [str(BIN / "ferritin"), "run", str(root), str(out), "participant", "--participant-label", *subjects,
           "--cluster", "slurm", "--workers", "2", "--spec", str(spec_file), "--no-progress"]
    # from the temporary folder: Slurm writes each job's slurm-<id>.out where it was submitted
    run = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path)
    cancelled = None
    for _ in range(3000):  # both worker jobs running and a stage node written: cancel one job mid-run
        running = [job for job, state in slurm.jobs() if state == "R"]
        if len(running) == 2 and store.exists() and any(CohortStore(store).record(f"derived/{s}/anat")
                                                         for s in subjects):
            cancelled = running[0]
            slurm.run("scancel", cancelled)
            break
        if run.poll() is not None:
            break
        time.sleep(0.2)
    text = run.communicate(timeout=900)[0]
    assert run.returncode == 0, text
    assert cancelled is not None, "never saw two running worker jobs:\n" + text
    assert "failed 0" in text, text
    assert_same_outputs(stage_outputs(store, subjects), reference)
    for _ in range(300):  # the client's close cancels its jobs: nothing is left in the queue
        if not slurm.jobs():
            break
        time.sleep(0.2)
    assert slurm.jobs() == []
