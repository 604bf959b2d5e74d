"""Where work runs: a Dask client for a local cluster or an existing scheduler.

Every per-subject stage is single-threaded numerically (one BLAS/ITK/FFT
thread per task) and parallel across subjects, which keeps results bitwise
independent of the number of workers.
"""

from __future__ import annotations

import os
from contextlib import contextmanager

from distributed import Client, LocalCluster

__all__ = ["dask_client", "SINGLE_THREAD_ENV"]

#: Environment for worker processes: one numerical thread per task.
SINGLE_THREAD_ENV = {
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS": "1",
}


@contextmanager
def dask_client(scheduler: str | None = None, workers: int | None = None, threads_per_worker: int = 1,
                processes: bool = True, memory_limit: str | None = "auto", quiet: bool = False):
    """Yield a :class:`distributed.Client`, closing what it started.

    Parameters
    ----------
    scheduler : str, optional
        Address (``tcp://host:8786``) or scheduler-file path of a running
        scheduler.  Without it a :class:`distributed.LocalCluster` is started.
    workers : int, optional
        Number of local worker processes (default: the number of cores).
    threads_per_worker : int
        Tasks run at once per worker.  Keep 1 for deterministic stages.
    processes : bool
        Local workers as processes (default) or threads of this process.
    """
    if scheduler:
        if os.path.exists(scheduler):
            client = Client(scheduler_file=scheduler)
        else:
            client = Client(scheduler)
        try:
            yield client
        finally:
            client.close()
        return
    n = workers or os.cpu_count() or 1
    env = SINGLE_THREAD_ENV if processes else {}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        cluster = LocalCluster(n_workers=n, threads_per_worker=threads_per_worker, processes=processes,
                               memory_limit=memory_limit, dashboard_address=":0", silence_logs=50 if quiet else 30)
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    client = Client(cluster)
    try:
        yield client
    finally:
        client.close()
        cluster.close()
