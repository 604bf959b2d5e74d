"""Pipeline throughput: wall time per stage and subjects/hour for cohorts of N subjects on 1 and 2 workers.

Run by hand:  .venv/bin/python benchmarks/pipeline.py [--subjects 8 16 32] [--workers 1 2] [--voxel 3]

For each N a demo-design cohort (N/2 + N/2, 6 echoes) is simulated once; then for each
worker count the whole study runs from a fresh store (participant level with ingest, group
level) and the script prints seconds per stage, subjects/hour, and the scaling
efficiency of 2 workers against 1 (ideal 1.0) in the same command.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

from ferritin import dask_client, load_spec, run_study
from ferritin.cohort.simulate import preset, simulate_cohort


def run_once(bids: Path, workdir: Path, workers: int, voxel: float) -> dict:
    spec = replace(load_spec(), mni_voxel_size=max(2.0, voxel))
    with dask_client(workers=workers, quiet=True) as client:
        res = run_study(bids, workdir / "out", spec, client, progress=False, report=False)
    t = dict(res.seconds)
    t["total"] = sum(t.values())
    t["peak_worker_gib"] = res.participants.peak_worker_gib
    return t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--subjects", type=int, nargs="+", default=[8, 16, 32])
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--voxel", type=float, default=3.0)
    args = ap.parse_args()
    print(f"{'N':>4s} {'workers':>7s} {'particip. s':>11s} {'group s':>8s} {'total s':>8s} "
          f"{'subj/h':>7s} {'peak GiB':>8s} {'efficiency':>10s}")
    for n in args.subjects:
        root = Path(tempfile.mkdtemp(prefix="ferritin-bench-"))
        try:
            spec = replace(preset("demo", voxel_size=args.voxel), n_per_group={"ALS": n // 2, "NC": n - n // 2})
            with dask_client(workers=2, quiet=True) as client:
                simulate_cohort(root / "bids", spec, client=client, progress=False)
            base = None
            for w in args.workers:
                work = root / f"w{w}"
                t = run_once(root / "bids", work, w, args.voxel)
                rate = n / t["total"] * 3600
                if base is None:
                    base = (w, t["total"])
                eff = base[1] * base[0] / (t["total"] * w)
                print(f"{n:4d} {w:7d} {t['participant']:11.1f} {t['group']:8.1f} {t['total']:8.1f} "
                      f"{rate:7.1f} {t['peak_worker_gib']:8.2f} {eff:10.2f}", flush=True)
                shutil.rmtree(work, ignore_errors=True)
        finally:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
