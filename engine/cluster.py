"""Where work runs: a Dask client on a local cluster, an existing scheduler,
Kubernetes (dask-kubernetes operator) or an HPC batch system (dask-jobqueue).

Settings live in Dask's configuration under ``ferritin.cluster`` (defaults in
the shipped ``ferritin.yaml``; override in ``~/.config/dask/`` or with
``DASK_FERRITIN__CLUSTER__...`` environment variables); explicit arguments win.

Every per-subject stage is single-threaded numerically (one BLAS/ITK/FFT
thread per task) and parallel across subjects, which keeps results bitwise
independent of the number of workers.
"""

from __future__ import annotations

import functools
import os
import threading
from contextlib import contextmanager
from importlib import resources

import dask.config
import yaml
from distributed import Client, LocalCluster

__all__ = ["dask_client", "make_cluster", "settings", "subject_task", "SINGLE_THREAD_ENV", "MEMORY_REUSE_ENV",
           "WORKER_ENV", "KINDS", "release_memory_near_limit", "worker_env"]

KINDS = ("local", "scheduler", "k8s", "slurm", "pbs")

#: Environment for worker processes: one numerical thread per task.
SINGLE_THREAD_ENV = {
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS": "1",
}

#: Environment for worker processes: the C library (glibc) keeps the memory a step frees for the
#: next step and the next subject instead of handing it back to the operating system.  A subject's
#: steps free and ask again for volumes of tens to hundreds of MB; memory handed back is zeroed and
#: faulted in again on its next use, which costs system time (on virtual machines, as much as a
#: third of the QSM chain's wall time, ``docs/worker-memory.md``).  The price: a worker's resident
#: memory stays at its largest subject's peak between tasks instead of shrinking (Dask's own default
#: trims it; :func:`release_memory_near_limit` hands it back after a subject that leaves a worker near
#: its memory limit).  Large blocks come from the heap rather than fresh mappings, freed heap is not trimmed,
#: and every thread allocates from the one heap (other arenas map large blocks afresh each time).
MEMORY_REUSE_ENV = {
    "MALLOC_MMAP_THRESHOLD_": str(2**32),
    "MALLOC_TRIM_THRESHOLD_": str(2**36),
    "MALLOC_ARENA_MAX": "1",
}

#: Everything a worker process is started with (local, Kubernetes, batch jobs, the container image).
WORKER_ENV = {**SINGLE_THREAD_ENV, **MEMORY_REUSE_ENV}


def subject_task(fn):
    """``fn`` as a cluster task that reads its own inputs, in its own thread.

    Inside a worker, dask hands any computation (a lazy xarray node's
    ``.values``) to the cluster and gives up the task's thread meanwhile
    (``secede``): the worker then starts the next subject on the same core,
    so one worker runs several subjects at once while another has run out of
    work.  With the synchronous scheduler a task reads its inputs itself and
    a worker runs one subject per thread, as its thread count says.
    """

    @functools.wraps(fn)
    def task(*args, **kwargs):
        try:
            with _synchronous_scheduler():
                return fn(*args, **kwargs)
        finally:
            release_memory_near_limit()

    return task


def release_memory_near_limit() -> bool:
    """On a Dask worker whose memory is past the lowest of its thresholds, hand the freed heap back.

    Workers keep freed memory for the next subject (:data:`MEMORY_REUSE_ENV`).  Dask's memory
    monitor counts that memory as the worker's: a worker left above its pause threshold by a
    large subject would pause, and with nothing of its own to spill, stay paused.  After each
    subject task, a worker above the lowest of its target, spill and pause fractions returns
    what it freed to the operating system (``malloc_trim``), as Dask's own default would have.
    Returns whether it did; outside a worker, or without glibc, it does nothing.
    """
    try:
        from distributed import get_worker

        manager = get_worker().memory_manager
    except (ValueError, AttributeError):  # not running on a worker
        return False
    limit = manager.memory_limit
    fractions = [f for f in (manager.memory_target_fraction, manager.memory_spill_fraction,
                             manager.memory_pause_fraction) if f]
    if not limit or not fractions:
        return False
    import psutil

    if psutil.Process().memory_info().rss <= min(fractions) * limit:
        return False
    return _malloc_trim()


def _malloc_trim() -> bool:
    try:
        import ctypes

        return bool(ctypes.CDLL("libc.so.6").malloc_trim(0))
    except (OSError, AttributeError):  # not the GNU C library
        return False


_sync_lock = threading.Lock()
_sync_users = 0
_sync_setting = None


@contextmanager
def _synchronous_scheduler():
    """Dask's synchronous scheduler while any subject task of this process runs.

    Dask's configuration is one per process: tasks running side by side in
    threads (several threads per worker, or workers in the client's own
    process) each setting and restoring it could leave it set after the last
    one ended, so the first one in sets it and the last one out restores it.
    """
    global _sync_users, _sync_setting
    with _sync_lock:
        if _sync_users == 0:
            _sync_setting = dask.config.set(scheduler="synchronous")
        _sync_users += 1
    try:
        yield
    finally:
        with _sync_lock:
            _sync_users -= 1
            if _sync_users == 0:
                _sync_setting.__exit__(None, None, None)
                _sync_setting = None


def _load_defaults() -> None:
    defaults = yaml.safe_load(resources.files("ferritin.engine").joinpath("ferritin.yaml").read_text())
    dask.config.update_defaults(defaults)


_load_defaults()


def settings() -> dict:
    """The effective ``ferritin.cluster`` settings (defaults < config files < environment)."""
    return dask.config.get("ferritin.cluster")


def worker_env() -> dict[str, str]:
    """The environment of the worker processes ferritin starts.

    :data:`WORKER_ENV`; without :data:`MEMORY_REUSE_ENV` where the setting
    ``ferritin.cluster.reuse-memory`` is false (workers then hand freed memory
    back as Dask's do by default: for machines where a worker's memory must
    shrink between subjects).
    """
    return dict(WORKER_ENV) if settings().get("reuse-memory", True) else dict(SINGLE_THREAD_ENV)


def _kube_cluster(cfg: dict, workers: int | None):
    try:
        from dask_kubernetes.operator import KubeCluster
    except ImportError as exc:  # pragma: no cover - depends on the optional extra
        raise RuntimeError("kind 'k8s' needs dask-kubernetes: pip install 'ferritin[k8s]'") from exc
    k8s = cfg["k8s"]
    env = worker_env()
    return KubeCluster(name=k8s["name"], image=k8s["image"], namespace=k8s.get("namespace"),
                       n_workers=workers or cfg.get("workers") or 2, resources=k8s["resources"], env=env,
                       worker_command=["dask", "worker", "--nthreads", str(cfg["threads-per-worker"])])


def _jobqueue_cluster(kind: str, cfg: dict, workers: int | None):
    try:
        import dask_jobqueue
    except ImportError as exc:
        raise RuntimeError(f"kind {kind!r} needs dask-jobqueue: pip install 'ferritin[hpc]'") from exc
    jq = cfg["jobqueue"]
    cls = {"slurm": dask_jobqueue.SLURMCluster, "pbs": dask_jobqueue.PBSCluster}[kind]
    prologue = [f"export {k}={v}" for k, v in worker_env().items()]
    cluster = cls(cores=jq["cores"], processes=jq["processes"], memory=jq["memory"], walltime=jq["walltime"],
                  queue=jq.get("queue"), account=jq.get("account"),
                  job_extra_directives=list(jq.get("job-extra-directives") or []),
                  local_directory=jq.get("local-directory"), job_script_prologue=prologue)
    n = workers or cfg.get("workers")
    if n:
        cluster.scale(jobs=int(n))
    return cluster


def make_cluster(kind: str | None = None, workers: int | None = None, processes: bool = True, quiet: bool = False):
    """Start the cluster of ``kind`` (default: ``ferritin.cluster.kind``); the caller closes it.

    Returns None for kind ``scheduler``, which connects to a running one instead.
    """
    cfg = settings()
    kind = kind or cfg["kind"]
    if kind not in KINDS:
        raise ValueError(f"unknown cluster kind {kind!r}; choose one of {', '.join(KINDS)}")
    if kind == "scheduler":
        return None
    if kind == "k8s":
        return _kube_cluster(cfg, workers)
    if kind in ("slurm", "pbs"):
        return _jobqueue_cluster(kind, cfg, workers)
    n = workers or cfg.get("workers") or os.cpu_count() or 1
    env = worker_env() if processes else {}  # a process's allocator and thread pools are set when it starts
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # inherited by the worker processes started now
    # and kept by each nanny for the workers it restarts later (after a crash or `Client.restart`)
    respawn = {**dask.config.get("distributed.nanny.pre-spawn-environ", {}), **env}
    try:
        with dask.config.set({"distributed.nanny.pre-spawn-environ": respawn}):
            return LocalCluster(n_workers=n, threads_per_worker=int(cfg["threads-per-worker"]), processes=processes,
                                memory_limit=cfg["memory-limit"], dashboard_address=":0",
                                silence_logs=50 if quiet else 30)
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


#: the address schemes of Dask's comms that a scheduler can listen on
SCHEDULER_SCHEMES = ("tcp", "tls", "ucx", "ws", "wss", "inproc")


def _connect(scheduler: str, security=None) -> Client:
    """A client of the scheduler at ``scheduler`` (an address or a scheduler file), or a one-line error."""
    from ferritin.cohort.errors import ClusterConnectionError

    kwargs = {"security": security} if security is not None else {}
    if os.path.exists(scheduler):
        target, kwargs["scheduler_file"] = None, scheduler
    else:
        scheme, sep, rest = str(scheduler).partition("://")
        host, _, port = rest.rpartition(":")
        if not sep or scheme not in SCHEDULER_SCHEMES or not host or not port.isdigit():
            raise ClusterConnectionError(
                f"scheduler {scheduler!r} is neither an address ({'|'.join(SCHEDULER_SCHEMES[:2])}://host:port) "
                f"nor an existing scheduler file")
        target = scheduler
    try:
        return Client(target, **kwargs) if target else Client(**kwargs)
    except (OSError, TimeoutError) as exc:
        raise ClusterConnectionError(f"no Dask scheduler answered at {scheduler} ({type(exc).__name__}: "
                                     f"{str(exc).splitlines()[0][:120] if str(exc) else 'no answer'})") from None


@contextmanager
def dask_client(scheduler: str | None = None, workers: int | None = None, processes: bool = True,
                quiet: bool = False, kind: str | None = None, security=None):
    """Yield a :class:`distributed.Client`, closing what it started.

    Parameters
    ----------
    scheduler : str, optional
        Address (``tcp://host:8786``, ``tls://…``) or scheduler-file path of a
        running scheduler; overrides ``kind``.
    workers : int, optional
        Local worker processes, or workers/jobs to start on k8s/slurm/pbs.
    processes : bool
        Local workers as processes (default) or threads of this process.
    kind : str, optional
        local | scheduler | k8s | slurm | pbs (default from the configuration).
    security : distributed.Security, optional
        TLS settings for ``tls://`` schedulers (else Dask's ``distributed.comm.tls`` config).
    """
    cfg = settings()
    if scheduler is None and (kind or cfg["kind"]) == "scheduler":
        scheduler = cfg.get("scheduler-file") or cfg.get("scheduler-address")
        if not scheduler:
            raise ValueError("cluster kind 'scheduler' needs ferritin.cluster.scheduler-address or scheduler-file")
    if scheduler:
        client = _connect(scheduler, security)
        try:
            yield client
        finally:
            client.close()
        return
    cluster = make_cluster(kind, workers, processes, quiet)
    client = Client(cluster)
    try:
        yield client
    finally:
        client.close()
        cluster.close()
