"""Pipeline throughput: wall time per stage and subjects/hour for cohorts of N subjects on 1 and 2 workers.

Run by hand:  .venv/bin/python benchmarks/pipeline.py [--subjects 8 16 32] [--workers 1 2] [--voxel 3]
                  [--echoes 6] [--levels participant group] [--reuse-memory on off]

For each N a demo-design cohort (N/2 + N/2, 6 echoes unless ``--echoes``) is simulated once;
then for each worker count the study runs from a fresh store (participant level with ingest,
group level, or the ``--levels`` given) and the script prints seconds per level, subjects/hour,
the scaling efficiency of 2 workers against 1 (ideal 1.0) in the same command, and the median
and range of each subject's anatomy and QSM as the workers ran them (the times recorded with
their outputs).  ``--reuse-memory on off`` runs each worker count with the workers keeping
freed memory (the default, ``ferritin.cluster.reuse-memory``) and without, one after the other.
"""

from __future__ import annotations

import argparse
import itertools
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

import dask.config
import numpy as np

from ferritin import dask_client, load_spec, run_study
from ferritin.cohort.simulate import preset, simulate_cohort
from ferritin.cohort.store import CohortStore
from ferritin.engine.pipeline import stage_seconds


def run_once(bids: Path, workdir: Path, workers: int, voxel: float, reuse_memory: bool = True,
             levels=("participant", "group")) -> dict:
    spec = replace(load_spec(), mni_voxel_size=max(2.0, voxel))
    with dask.config.set({"ferritin.cluster.reuse-memory": reuse_memory}), \
            dask_client(workers=workers, quiet=True) as client:
        res = run_study(bids, workdir / "out", spec, client, levels=tuple(levels), progress=False, report=False)
    t = {level: res.seconds.get(level, float("nan")) for level in ("participant", "group")}
    t["total"] = sum(res.seconds.values())
    t["peak_worker_gib"] = res.participants.peak_worker_gib if res.participants else float("nan")
    store = CohortStore(res.store)
    t["stages"] = {stage: stage_seconds(store, stage, store.children("derived")) for stage in ("anat", "qsm")}
    return t


def _median_range(seconds: list[float]) -> str:
    if not seconds:
        return "-"
    return f"{np.median(seconds):.1f} ({min(seconds):.1f}-{max(seconds):.1f})"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--subjects", type=int, nargs="+", default=[8, 16, 32])
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--voxel", type=float, default=3.0)
    ap.add_argument("--echoes", type=int, default=6)
    ap.add_argument("--levels", nargs="+", choices=["participant", "group"], default=["participant", "group"])
    ap.add_argument("--reuse-memory", nargs="+", choices=["on", "off"], default=["on"])
    args = ap.parse_args()
    print(f"{'N':>4s} {'workers':>7s} {'reuse':>5s} {'particip. s':>11s} {'group s':>8s} {'total s':>8s} "
          f"{'subj/h':>7s} {'peak GiB':>8s} {'efficiency':>10s}  {'anatomy s: median (range)':>26s}"
          f"  {'QSM s: median (range)':>22s}")
    for n in args.subjects:
        root = Path(tempfile.mkdtemp(prefix="ferritin-bench-"))
        try:
            spec = replace(preset("demo", voxel_size=args.voxel), n_per_group={"ALS": n // 2, "NC": n - n // 2},
                          n_echoes=args.echoes)
            with dask_client(workers=2, quiet=True) as client:
                simulate_cohort(root / "bids", spec, client=client, progress=False)
            base = {}
            for w, reuse in itertools.product(args.workers, args.reuse_memory):
                work = root / f"w{w}-{reuse}"
                t = run_once(root / "bids", work, w, args.voxel, reuse_memory=reuse == "on", levels=args.levels)
                rate = n / t["total"] * 3600
                base.setdefault(reuse, (w, t["total"]))
                eff = base[reuse][1] * base[reuse][0] / (t["total"] * w)
                print(f"{n:4d} {w:7d} {reuse:>5s} {t['participant']:11.1f} {t['group']:8.1f} {t['total']:8.1f} "
                      f"{rate:7.1f} {t['peak_worker_gib']:8.2f} {eff:10.2f}  {_median_range(t['stages']['anat']):>26s}"
                      f"  {_median_range(t['stages']['qsm']):>22s}", flush=True)
                shutil.rmtree(work, ignore_errors=True)
        finally:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
