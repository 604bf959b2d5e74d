"""Cohort-store throughput: a local store against a transactional store on S3, in one run.

Run by hand:  .venv/bin/python benchmarks/store_throughput.py [--subjects 8] [--repeats 3] [--s3 s3://bucket/prefix]

Without ``--s3`` the S3 side is moto's server on loopback (a Python process on this machine: its
figures say what the transactional protocol costs in requests and commits, not what a real object
store's bandwidth is); with ``--s3`` and the AWS environment variables set it is that bucket.

For each store it times, from a fresh store each repeat (median of the repeats):
  ingest        ``ingest`` of a simulated demo-design cohort (N subjects, 3 mm, 6 echoes), 2 workers;
  participant   one derived node per subject (four float32 maps on the 2 mm MNI grid), written by
                2 workers at once (one commit per node on S3);
  group read    every subject's derived node read back (what the group level's stacking reads).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
import uuid
from dataclasses import replace
from pathlib import Path

import numpy as np
import xarray as xr
from scipy import ndimage

from ferritin import dask_client
from ferritin.cohort.simulate import preset, simulate_cohort
from ferritin.cohort.store import CohortStore
from ferritin.engine.ingest import ingest

MNI_2MM = (91, 109, 91)
MAPS = ("chi_mni", "gm_mod", "gm_mod_s", "wm_mod")


def derived_node(seed: int) -> xr.Dataset:
    """Four smooth float32 maps on the 2 mm MNI grid: the size and texture of a subject's derived node."""
    rng = np.random.default_rng(seed)
    maps = {m: (("x", "y", "z"), ndimage.gaussian_filter(rng.standard_normal(MNI_2MM), 1.5).astype(np.float32))
            for m in MAPS}
    return xr.Dataset(maps)


def write_one(store: str, subject: str, seed: int) -> int:
    ds = derived_node(seed)
    CohortStore(store).write_node(f"derived/{subject}/bench", ds, stage="bench", digest=str(seed))
    return int(ds.nbytes)


def read_all(store: str, subjects: list[str]) -> int:
    s = CohortStore(store)
    return sum(int(s.open_node(f"derived/{sub}/bench").load().nbytes) for sub in subjects)


def measure(location: str, bids: Path, subjects: list[str], client) -> dict:
    t0 = time.perf_counter()
    res = ingest(bids, location, client, progress=False)
    t_ingest = time.perf_counter() - t0
    assert not res.failed, res.failed
    native = CohortStore(location)
    mb_ingest = sum(native.open_node(f"native/{s}").nbytes for s in subjects) / 1e6
    t0 = time.perf_counter()
    written = sum(client.gather(client.map(write_one, [location] * len(subjects), subjects, range(len(subjects)),
                                           pure=False)))
    t_write = time.perf_counter() - t0
    t0 = time.perf_counter()
    read = read_all(location, subjects)
    t_read = time.perf_counter() - t0
    return {"ingest": (t_ingest, mb_ingest), "participant write": (t_write, written / 1e6),
            "group read": (t_read, read / 1e6)}


def start_moto():
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    os.environ.update({"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "bench",
                       "AWS_SECRET_ACCESS_KEY": "bench", "AWS_REGION": "us-east-1"})
    import boto3

    boto3.client("s3").create_bucket(Bucket="ferritin-bench")
    return server, "s3://ferritin-bench"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--subjects", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--s3", help="s3://bucket/prefix to measure instead of a moto server on loopback")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="ferritin-store-bench-"))
    server = None
    if args.s3:
        s3_base = args.s3.rstrip("/")
    else:
        server, s3_base = start_moto()  # before the workers start, so that they inherit its address
    try:
        n = args.subjects
        spec = replace(preset("demo", voxel_size=3.0), n_per_group={"ALS": n // 2, "NC": n - n // 2})
        with dask_client(workers=2, quiet=True) as client:
            table = simulate_cohort(root / "bids", spec, client=client, progress=False)
            subjects = sorted(table["participant_id"])
            runs = {"local": [], "S3": []}
            for r in range(args.repeats):
                for name, location in (("local", str(root / f"local-{r}.zarr")),
                                       ("S3", f"{s3_base}/bench-{uuid.uuid4().hex[:8]}.zarr")):
                    runs[name].append(measure(location if name == "S3" else Path(location), root / "bids",
                                              subjects, client))
                shutil.rmtree(root / f"local-{r}.zarr", ignore_errors=True)
        print(f"{n} subjects, {args.repeats} repeats (median), 2 workers; S3 = "
              f"{args.s3 or 'moto on loopback'}")
        print(f"{'operation':18s} {'MB':>7s} {'local s':>8s} {'local MB/s':>10s} {'S3 s':>7s} {'S3 MB/s':>8s} "
              f"{'S3/local':>8s}")
        for op in runs["local"][0]:
            mb = runs["local"][0][op][1]
            loc = statistics.median(m[op][0] for m in runs["local"])
            s3 = statistics.median(m[op][0] for m in runs["S3"])
            print(f"{op:18s} {mb:7.1f} {loc:8.2f} {mb / loc:10.1f} {s3:7.2f} {mb / s3:8.1f} {s3 / loc:8.2f}")
    finally:
        shutil.rmtree(root, ignore_errors=True)
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
