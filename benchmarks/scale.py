"""Group statistics on a very large cohort read from a Zarr store, with memory bounded by the chunk size.

Run by hand:  .venv/bin/python benchmarks/scale.py [--subjects 10000] [--voxel 2] [--store /tmp/scale.zarr]

Writes (once) a synthetic (subject, x, y, z) float32 store on the MNI grid —
white noise plus a group effect in a sphere, two groups, TIV and age
covariates — chunked (all subjects, 16³ voxels), then runs what the group
level runs: voxelwise GLM, T map, standardised residuals (64, as SPM),
smoothness, resels and the RFT FWE threshold.  Prints wall time and the
process's peak resident memory, which is bounded by a few chunks, not by the
cohort (10,000 subjects at 2 mm are 44 GB).
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

import dask
import dask.array as da
import numpy as np

from ferritin.cohort.templates import load_template
from ferritin.stats import rft
from ferritin.stats.glm import fit_glm, standardized_residuals, t_contrast
from ferritin.stats.smoothness import est_smoothness


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def design(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    g = (np.arange(n) < n // 2).astype(float)
    return np.column_stack([g, 1 - g, rng.normal(0, 120, n), rng.normal(0, 9, n)])


def write_store(path: Path, n: int, grid, chunk: int, seed: int = 0) -> None:
    import zarr

    shape = (n, *grid.shape)
    g = (np.arange(n) < n // 2).astype(np.float32)
    centre = np.asarray(grid.shape) // 2
    ijk = np.indices(grid.shape)
    effect = (0.5 * (((ijk - centre[:, None, None, None]) ** 2).sum(0) < 25)).astype(np.float32)
    root = zarr.open_group(str(path), mode="w")
    arr = root.create_array("Y", shape=shape, chunks=(n, chunk, chunk, chunk), dtype="float32")
    rs = da.random.RandomState(seed)
    noise = rs.standard_normal(shape, chunks=(n, chunk, chunk, chunk)).astype(np.float32)
    Y = noise + da.from_array(g, chunks=n)[:, None, None, None] * da.from_array(effect, chunks=chunk)[None]
    da.store(Y, arr, lock=False)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--subjects", type=int, default=10000)
    ap.add_argument("--voxel", type=float, default=2.0)
    ap.add_argument("--chunk", type=int, default=16)
    ap.add_argument("--store", type=Path, default=Path("/tmp/ferritin-glm-scale.zarr"))
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    tpl = load_template(args.voxel)
    grid, mask = tpl.grid, tpl.brain_mask
    n = args.subjects
    gib = n * int(np.prod(grid.shape)) * 4 / 2**30
    print(f"{n} subjects x {grid.shape} ({int(mask.sum())} voxels in mask) = {gib:.1f} GiB float32", flush=True)
    dask.config.set(scheduler="threads", num_workers=args.threads)
    if not (args.store / "zarr.json").exists():
        t0 = time.perf_counter()
        write_store(args.store, n, grid, args.chunk)
        print(f"wrote {args.store} in {time.perf_counter() - t0:.0f} s (peak RSS {peak_rss_gib():.2f} GiB)", flush=True)
    Y = da.from_zarr(str(args.store), component="Y")
    if Y.shape[0] != n:
        raise SystemExit(f"{args.store} holds {Y.shape[0]} subjects; remove it or pass --subjects {Y.shape[0]}")
    X = design(n)
    c = np.array([1.0, -1.0, 0.0, 0.0])
    t0 = time.perf_counter()
    fit = fit_glm(Y, X, mask=mask).persist()
    t_fit = time.perf_counter() - t0
    T = np.asarray(t_contrast(fit, c).compute())
    resid = standardized_residuals(fit)  # 64 images, as SPM
    sm = est_smoothness(resid, mask, (n, fit.df))
    u = rft.threshold_fwe(0.05, (1, fit.df), "T", sm.resels, S=int(mask.sum()))
    total = time.perf_counter() - t0
    centre = tuple(np.asarray(grid.shape) // 2)
    print(f"GLM fit {t_fit:.0f} s; GLM + T + smoothness (64 residual images) + RFT {total:.0f} s on {args.threads} threads")
    print(f"FWHM {np.round(sm.fwhm_vox * args.voxel, 2).tolist()} mm, resels {sm.resels[-1]:.0f}, "
          f"FWE threshold T = {u:.2f}; T at the planted effect {T[centre]:.1f}, max T outside it "
          f"{np.nanmax(np.where(np.abs(np.indices(grid.shape) - np.array(centre)[:, None, None, None]).max(0) > 8, T, np.nan)):.2f}")
    print(f"peak resident memory {peak_rss_gib():.2f} GiB (data {gib:.1f} GiB)")


if __name__ == "__main__":
    main()
