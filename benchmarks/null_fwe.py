"""False positives of the whole pipeline on null cohorts (no planted effect), over seeds.

Run by hand:  .venv/bin/python benchmarks/null_fwe.py [--seeds 0 1 2 3] [--subjects 8] [--voxel 3]

Each seed simulates a cohort with the `null` preset (same anatomy, noise and
clinical model as the reference study, no group effect), runs ingest, the
participant and the group level with the default study spec, and records
whether any result is significant after correction: a small-volume peak with
p(FWE-SVC) < 0.05, or a whole-brain peak or cluster with p(FWE) < 0.05.  The
family-wise false-positive rate over seeds should be at most 5 % (per seed the
four SVCs and two contrasts are each tested at 5 %, so the any-result rate of a
seed is the union of those tests; both are printed).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cohort.simulate import preset, simulate_cohort  # noqa: E402
from engine.cluster import dask_client  # noqa: E402
from engine.ingest import ingest  # noqa: E402
from engine.pipeline import run_group, run_participants  # noqa: E402
from engine.spec import load_spec  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    ap.add_argument("--subjects", type=int, default=8, help="per group")
    ap.add_argument("--voxel", type=float, default=3.0)
    args = ap.parse_args()
    tests = hits = seeds_with_hit = 0
    for seed in args.seeds:
        root = Path(tempfile.mkdtemp(prefix="ferritin-null-"))
        try:
            sim = replace(preset("null", voxel_size=args.voxel, n_echoes=6, seed=seed),
                          n_per_group={"ALS": args.subjects, "NC": args.subjects})
            spec = load_spec()
            spec["mni_voxel_size"] = max(2.0, args.voxel)
            with dask_client(workers=2, quiet=True) as client:
                simulate_cohort(root / "bids", sim, client=client, progress=False)
                ingest(root / "bids", root / "cohort.zarr", client, progress=False)
                run_participants(root / "cohort.zarr", spec, client, progress=False)
            res = run_group(root / "cohort.zarr", spec, root / "out")
            found = []
            for name, c in res["contrasts"].items():
                for region, t in c["svc"].items():
                    tests += 1
                    if "p_fwe" in t.columns and len(t) and t["p_fwe"].min() < 0.05:
                        hits += 1
                        found.append(f"{name}/{region} p={t['p_fwe'].min():.3f}")
                table: pd.DataFrame = c["table"]
                tests += 1
                if len(table) and (table["p_fwe"].min() < 0.05 or table["cluster_p_fwe"].min() < 0.05):
                    hits += 1
                    found.append(f"{name}/whole brain")
            seeds_with_hit += bool(found)
            print(f"seed {seed}: {len(res['subjects'])} subjects, false positives: {found or 'none'}", flush=True)
        finally:
            shutil.rmtree(root, ignore_errors=True)
    print(f"{len(args.seeds)} null cohorts: {hits} of {tests} corrected tests significant "
          f"({100 * hits / max(tests, 1):.1f} %, nominal 5 %); seeds with any significant result: "
          f"{seeds_with_hit}/{len(args.seeds)}")


if __name__ == "__main__":
    main()
