"""Cluster settings through dask.config, the HPC deployers, and the one-run-per-store lock."""

from __future__ import annotations

import os
import platform
import signal
import subprocess
import sys
from pathlib import Path

import dask.config
import pytest

from ferritin.cohort.store import CohortStore, StoreLocked
from ferritin.engine import cluster

REPO = Path(__file__).resolve().parents[1]


def test_defaults_are_in_the_ferritin_namespace():
    cfg = cluster.settings()
    assert cfg["kind"] == "local" and cfg["threads-per-worker"] == 1
    assert dask.config.get("ferritin.store.lock") is True


def test_environment_overrides_the_shipped_defaults():
    env = {**os.environ, "DASK_FERRITIN__CLUSTER__KIND": "slurm", "DASK_FERRITIN__CLUSTER__JOBQUEUE__MEMORY": "12GiB"}
    code = "from ferritin.engine import cluster; c = cluster.settings(); print(c['kind'], c['jobqueue']['memory'], c['jobqueue']['cores'])"
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["slurm", "12GiB", "1"]


def test_unknown_kind_and_missing_scheduler_are_clear_errors():
    with pytest.raises(ValueError, match="unknown cluster kind 'yarn'"):
        cluster.make_cluster("yarn")
    with dask.config.set({"ferritin.cluster.kind": "scheduler"}):
        with pytest.raises(ValueError, match="scheduler-address or scheduler-file"):
            with cluster.dask_client():
                pass


@pytest.mark.parametrize("kind, directive", [("slurm", "#SBATCH"), ("pbs", "#PBS")])
def test_jobqueue_cluster_writes_a_single_threaded_job(kind, directive):
    pytest.importorskip("dask_jobqueue")
    with dask.config.set({"ferritin.cluster.jobqueue.memory": "7GiB", "ferritin.cluster.jobqueue.walltime": "01:30:00"}):
        c = cluster.make_cluster(kind)
    try:
        script = c.job_script()
    finally:
        c.close()
    assert directive in script and "01:30:00" in script
    for k, v in cluster.WORKER_ENV.items():
        assert f"export {k}={v}" in script, k
    assert "--nthreads 1" in script and "--memory-limit 7.00GiB" in script


def test_memory_reuse_can_be_turned_off_in_the_settings():
    pytest.importorskip("dask_jobqueue")
    assert cluster.worker_env() == cluster.WORKER_ENV
    with dask.config.set({"ferritin.cluster.reuse-memory": False}):
        assert cluster.worker_env() == cluster.SINGLE_THREAD_ENV
        c = cluster.make_cluster("slurm")
        try:
            script = c.job_script()
        finally:
            c.close()
    assert "MALLOC_" not in script and "export OMP_NUM_THREADS=1" in script


def test_second_run_on_a_store_is_refused_and_a_killed_holder_is_taken_over(tmp_path):
    store = CohortStore(tmp_path / "c.zarr", create=True)
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from ferritin.cohort.store import CohortStore; s = CohortStore(sys.argv[1]);\n"
         "with s.lock('participant level'):\n    print('held', flush=True); time.sleep(120)", str(store.path)],
        cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(StoreLocked, match=r"in use by another run \(participant level, pid \d+"):
            with store.lock("group level"):
                pass
        from ferritin.engine.pipeline import run_group

        with pytest.raises(StoreLocked):
            run_group(store.path, {}, tmp_path / "out")
        assert not (tmp_path / "out").exists()  # refused before writing anything
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # the holder died without cleaning up: its lock is stale and is taken over
    assert store.lock_path.exists()
    with store.lock("group level"):
        with store.lock("nested, same process"):
            pass
        assert store.lock_path.exists()
    assert not store.lock_path.exists()


def test_cli_reports_a_locked_store(tmp_path, capsys):
    from ferritin.engine.cli import main

    store = CohortStore(tmp_path / "out" / "cohort.zarr", create=True)
    store.lock_path.write_text('{"pid": 1, "host": "elsewhere", "purpose": "ingest", "started": "now"}')
    assert main(["run", str(tmp_path / "bids"), str(tmp_path / "out"), "group"]) == 4
    assert "in use by another run (ingest" in capsys.readouterr().err


def _read_then_work(seconds: float) -> tuple[float, float]:
    import time

    import dask.array as da

    start = time.monotonic()
    da.ones(8, chunks=4).sum().compute()  # a task reading its inputs through dask, as the stages do
    time.sleep(seconds)
    return start, time.monotonic()


def _spans(fn) -> list[tuple[float, float]]:
    """Start and end of three tasks on a fresh one-thread worker process."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=":0") as lc, Client(lc) as client:
        return sorted(client.gather([client.submit(fn, 0.5, pure=False, key=f"read-{i}") for i in range(3)]))


def test_a_subject_task_keeps_its_worker_thread_while_it_reads():
    """A one-thread worker runs one subject at a time: a stage that reads through
    dask must not hand its thread to the next subject (which piled several subjects
    on one worker while another idled)."""
    def overlaps(spans):
        return any(b[0] < a[1] for a, b in zip(spans, spans[1:]))

    assert overlaps(_spans(_read_then_work)), "dask no longer gives up a task's thread while it computes: update this test"
    wrapped = _spans(cluster.subject_task(_read_then_work))
    assert not overlaps(wrapped), wrapped


def test_subject_tasks_in_the_clients_own_process_leave_its_scheduler_as_it_was():
    """Threads of an in-process cluster share dask's configuration: many overlapping
    subject tasks must leave the client's scheduler setting as they found it."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=4, processes=False, dashboard_address=":0") as lc, \
            Client(lc) as client:
        before = dask.config.get("scheduler", None)
        task = cluster.subject_task(_read_then_work)
        client.gather([client.submit(task, 0.01 * (i % 5), pure=False, key=f"read-{i}") for i in range(40)])
        assert dask.config.get("scheduler", None) == before


def test_local_workers_start_with_the_worker_environment():
    """The nanny's own default (trim freed memory at 64 KiB) must not win over ferritin's."""
    def env():
        return {k: os.environ.get(k) for k in cluster.WORKER_ENV}

    with cluster.dask_client(workers=1, quiet=True) as client:
        seen = client.run(env)
        client.restart()  # new worker processes, started by the nannies long after the cluster
        again = client.run(env)
    assert list(seen.values()) == [cluster.WORKER_ENV] and list(again.values()) == [cluster.WORKER_ENV]


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the settings are the GNU C library's")
def test_memory_reuse_env_keeps_freed_volumes_for_the_next_allocation():
    """A volume freed and asked again is not faulted in again (page faults of the second allocation)."""
    code = ("import resource, numpy as np\n"
            "def faults():\n"
            "    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
            "    np.ones(25_000_000)  # 200 MB, freed at once\n"
            "    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before\n"
            "print(faults(), faults())")
    counts = {}
    for name, extra in (("default", {}), ("reuse", cluster.MEMORY_REUSE_ENV)):
        env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
        out = subprocess.run([sys.executable, "-c", code], env={**env, "NUMPY_MADVISE_HUGEPAGE": "0", **extra},
                             capture_output=True, text=True, check=True)
        counts[name] = [int(n) for n in out.stdout.split()]
    # 200 MB is ~49,000 pages of 4 KiB: without reuse both allocations fault them in, with it only the first
    assert counts["default"][1] > 20_000
    assert counts["reuse"][0] > 20_000 and counts["reuse"][1] < 1_000


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the settings are the GNU C library's")
def test_a_subject_that_leaves_a_worker_near_its_memory_limit_hands_the_memory_back():
    """Kept freed memory must not leave a worker above Dask's pause threshold, paused for good."""
    def allocate_and_free():
        import numpy as np
        import psutil

        np.ones(700 * 2**20 // 8).sum()  # 700 MiB, touched and freed: past 60 % of the 1 GiB limit
        return psutil.Process().memory_info().rss

    def resident():
        import psutil

        return psutil.Process().memory_info().rss

    mib = 2**20
    with dask.config.set({"ferritin.cluster.memory-limit": "1GiB"}):
        with cluster.dask_client(workers=1, quiet=True) as client:
            base = client.submit(resident, pure=False).result()
            kept = client.submit(allocate_and_free, pure=False).result()  # not a subject task: kept
            handed_back = client.submit(cluster.subject_task(allocate_and_free), pure=False).result()
            after = client.submit(resident, pure=False).result()
    assert kept > base + 600 * mib  # the workers' environment keeps freed memory...
    assert handed_back > base + 600 * mib and after < base + 150 * mib  # ...unless the worker is near its limit


def test_memory_is_not_handed_back_outside_a_worker_or_below_the_threshold():
    assert cluster.release_memory_near_limit() is False  # this process is not a worker
    with cluster.dask_client(workers=1, quiet=True) as client:  # a worker far below its limit keeps it
        assert client.submit(cluster.release_memory_near_limit, pure=False).result() is False
