"""A real multi-process Dask cluster on loopback (``dask scheduler`` + ``dask worker``
processes): a worker killed mid-run, a client killed mid-run, and invariance of the
results to both and to the number of workers."""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

pytest.importorskip("ants")

from conftest import FAST_STUDY, assert_same_outputs, stage_outputs  # noqa: E402
from distributed import Client  # noqa: E402

from ferritin.cohort.store import CohortStore  # noqa: E402
from ferritin.engine import pipeline  # noqa: E402
from ferritin.engine.cluster import WORKER_ENV  # noqa: E402
from ferritin.engine.ingest import ingest  # noqa: E402

pytestmark = pytest.mark.slow  # real scheduler and worker processes

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


class LoopbackCluster:
    """``dask scheduler`` and named ``dask worker`` processes on 127.0.0.1."""

    def __init__(self, tmp: Path):
        self.file = tmp / "scheduler.json"
        self.env = {**os.environ, **WORKER_ENV}
        self.procs = {}
        self.procs["scheduler"] = subprocess.Popen(
            [str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", "0", "--dashboard-address", ":0",
             "--scheduler-file", str(self.file)], env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(300):
            if self.file.exists() and self.file.stat().st_size:
                break
            time.sleep(0.1)

    def add_worker(self, name: str) -> None:
        self.procs[name] = subprocess.Popen(
            [str(BIN / "dask"), "worker", "--scheduler-file", str(self.file), "--nthreads", "1", "--name", name,
             "--host", "127.0.0.1", "--no-nanny", "--dashboard-address", ":0"],
            env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def kill(self, name: str) -> None:
        self.procs[name].send_signal(signal.SIGKILL)
        self.procs[name].wait()

    def close(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.terminate()
        for p in self.procs.values():
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()


@pytest.fixture(scope="module")
def loopback(tmp_path_factory):
    c = LoopbackCluster(tmp_path_factory.mktemp("cluster"))
    c.add_worker("w1")
    yield c
    c.close()


def _spec():
    return copy.deepcopy(FAST_STUDY)


@pytest.fixture(scope="module")
def reference(loopback, tiny_bids, tmp_path_factory):
    """The undisturbed run, on one worker process."""
    root, table = tiny_bids
    subjects = sorted(table["participant_id"])[:2]
    store = tmp_path_factory.mktemp("ref") / "cohort.zarr"
    with Client(scheduler_file=str(loopback.file)) as client:
        client.wait_for_workers(1)
        ingest(root, store, client, progress=False)
        summary = pipeline.run_participants(store, _spec(), client, subjects, progress=False)
    assert not summary.failed
    return subjects, stage_outputs(store, subjects)


def test_worker_killed_mid_run_gives_identical_results_with_two_workers(loopback, reference, tiny_bids, tmp_path):
    subjects, ref = reference
    root, _ = tiny_bids
    loopback.add_worker("w2")
    store = tmp_path / "cohort.zarr"
    with Client(scheduler_file=str(loopback.file)) as client:
        client.wait_for_workers(2)
        ingest(root, store, client, progress=False)
        result = {}
        run = threading.Thread(target=lambda: result.update(
            s=pipeline.run_participants(store, _spec(), client, subjects, progress=False)))
        run.start()
        killed = False
        for _ in range(600):  # wait until w2 is computing a stage, then kill it
            busy = {w["name"]: w.get("metrics", {}).get("task_counts", {}).get("executing", 0)
                    for w in client.scheduler_info()["workers"].values()}
            if busy.get("w2"):
                loopback.kill("w2")
                killed = True
                break
            if not run.is_alive():
                break
            time.sleep(0.1)
        run.join(timeout=600)
    assert killed, "w2 never ran a task"
    summary = result["s"]
    assert not summary.failed, summary.text()
    assert_same_outputs(stage_outputs(store, subjects), ref)


def _anatomy_recorded(store, subjects) -> bool:
    """Whether any subject's anatomy node is complete; False while the client is still creating the store."""
    try:
        return any(CohortStore(store).record(f"derived/{s}/anat") for s in subjects)
    except FileNotFoundError:  # the folder exists before the store's own metadata is written
        return False


def test_killed_client_resumes_and_matches(loopback, reference, tiny_bids, tmp_path):
    subjects, ref = reference
    root, _ = tiny_bids
    spec_file = tmp_path / "fast.yaml"
    spec_file.write_text(yaml.safe_dump(FAST_STUDY))
    out = tmp_path / "out"
    cmd = [str(BIN / "ferritin"), "run", str(root), str(out), "participant", "--participant-label", *subjects,
           "--scheduler", str(loopback.file), "--spec", str(spec_file), "--no-progress"]
    env = {**os.environ}
    first = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    store = out / "cohort.zarr"
    for _ in range(1200):  # kill the client once the first anatomy node is complete
        if _anatomy_recorded(store, subjects):
            break
        if first.poll() is not None:
            break
        time.sleep(0.1)
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert CohortStore(store).lock_path.exists()  # the killed client could not clean up
    second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "unchanged" in second.stdout and "failed 0" in second.stdout
    # nothing computed twice that was complete: at least one stage node was reused
    assert any(f"unchanged {n}" in second.stdout for n in (1, 2))
    assert_same_outputs(stage_outputs(store, subjects), ref)
    assert not CohortStore(store).lock_path.exists()
