"""Simulator speed and size: a 4-subject cohort at 3 mm, and per-subject cost at other resolutions.

Run by hand:  .venv/bin/python benchmarks/simulate.py [--full]
Prints median seconds per subject (serial, one process) next to the wall time of the
same cohort on a 2-worker LocalCluster, in the same command, plus size on disk.
``--full`` also times one subject at 1 mm and extrapolates the 68-subject reference study.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from ferritin.cohort.simulate import preset, sample_participants, simulate_cohort, simulate_subject, write_bids_subject
from ferritin.cohort.templates import load_template
from ferritin.engine.cluster import dask_client


def du(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


def per_subject(spec, n: int):
    load_template(spec.voxel_size)  # template load is a one-off per process
    df = sample_participants(spec)
    times, sizes = [], []
    for i in range(n):
        with tempfile.TemporaryDirectory() as d:
            t0 = time.perf_counter()
            truth = simulate_subject(spec, df.iloc[i].to_dict(), i)
            write_bids_subject(Path(d), truth, spec)
            times.append(time.perf_counter() - t0)
            sizes.append(du(Path(d)))
    return statistics.median(times), statistics.median(sizes)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--full", action="store_true", help="also time 1 mm (reference-study) subjects")
    args = ap.parse_args()
    spec = preset("tiny")
    med, size = per_subject(spec, 3)
    print(f"3 mm, {spec.n_echoes} echoes: {med:.2f} s/subject serial (median of 3), {size:.1f} MiB/subject")
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        with dask_client(workers=2, quiet=True) as client:
            simulate_cohort(Path(d) / "bids", spec, client=client)
        wall = time.perf_counter() - t0
        print(f"4-subject 3 mm cohort on a 2-worker LocalCluster: {wall:.1f} s wall (incl. cluster start), "
              f"{du(Path(d)):.1f} MiB; serial estimate {4 * med:.1f} s -> ratio {4 * med / wall:.2f}x")
    spec2 = preset("demo")
    med2, size2 = per_subject(spec2, 2)
    print(f"2 mm, {spec2.n_echoes} echoes: {med2:.2f} s/subject, {size2:.1f} MiB/subject")
    if args.full:
        spec1 = preset("reference-study")
        med1, size1 = per_subject(spec1, 1)
        n = sum(spec1.n_per_group.values())
        print(f"1 mm, {spec1.n_echoes} echoes: {med1:.1f} s/subject, {size1:.0f} MiB/subject; "
              f"reference study ({n} subjects): ~{n * med1 / 2 / 60:.0f} min on 2 workers, ~{n * size1 / 1024:.1f} GiB")


if __name__ == "__main__":
    main()
