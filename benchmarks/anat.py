"""Anatomy chain: seconds per step and accuracy at 2 mm (and 1 mm), ANTs against dipy, same subject, same command.

Run by hand:  .venv/bin/python benchmarks/anat.py [--voxel 2] [--subjects 2] [--full]   (dipy: pip install dipy)

A simulated subject has a known T1→MNI warp, true tissue maps and TIV.  Printed per subject:
- seconds of each step of ``engine.anat.process_anatomy`` (ANTs via antspyx), with and without
  skull stripping before SyN, and with the T1-only normalisation (``normalise_on="t1"``) as its peer;
- normalisation Dice: the subject's TRUE GM carried to MNI through the estimated mapping vs the
  template GM (> 0.5), before (no normalisation) and after;
- segmentation Dice (GM > 0.5 vs truth on the T1 grid) and TIV error against the truth;
- dipy's affine + SyN (CC metric) on the same images: seconds and the same normalisation Dice.
``--full`` adds one subject at 1 mm.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import numpy as np

from ferritin.cohort.simulate import preset, sample_participants, simulate_subject
from ferritin.cohort.templates import load_template
from ferritin.engine.anat.stages import AnatParams, process_anatomy, sample_at


def dice(a, b):
    return 2 * (a & b).sum() / max(a.sum() + b.sum(), 1)


def mni_world(grid):
    ijk = np.indices(grid.shape).reshape(3, -1)
    return (grid.affine[:3, :3] @ ijk + grid.affine[:3, 3:4]).reshape((3, *grid.shape))


def dipy_normalise(t1, t1_aff, template):
    from dipy.align.imaffine import AffineRegistration, MutualInformationMetric, transform_centers_of_mass
    from dipy.align.imwarp import SymmetricDiffeomorphicRegistration
    from dipy.align.metrics import CCMetric
    from dipy.align.transforms import AffineTransform3D, RigidTransform3D, TranslationTransform3D

    static, s_aff = template.t1.astype(np.float64), template.grid.affine
    moving = np.asarray(t1, dtype=np.float64)
    t0 = time.perf_counter()
    com = transform_centers_of_mass(static, s_aff, moving, t1_aff)
    reg = AffineRegistration(metric=MutualInformationMetric(32, None), level_iters=[200, 50, 10],
                             sigmas=[3.0, 1.0, 0.0], factors=[4, 2, 1])
    prev = com.affine
    for tf in (TranslationTransform3D(), RigidTransform3D(), AffineTransform3D()):
        prev = reg.optimize(static, moving, tf, None, s_aff, t1_aff, starting_affine=prev).affine
    t_aff = time.perf_counter() - t0
    sdr = SymmetricDiffeomorphicRegistration(CCMetric(3), level_iters=[40, 20, 0])
    mapping = sdr.optimize(static, moving, s_aff, t1_aff, prev)
    return mapping, t_aff, time.perf_counter() - t0 - t_aff


def one_subject(spec, index, template):
    truth = simulate_subject(spec, sample_participants(spec).iloc[index].to_dict(), index)
    grid = template.grid
    before = dice(np.nan_to_num(sample_at(truth.gm_t1, truth.t1w_affine, mni_world(grid), cval=0.0)) > 0.5,
                  template.gm > 0.5)
    print(f"subject {index} at {spec.voxel_size:g} mm: normalisation Dice before {before:.3f}; true TIV "
          f"{truth.tiv_ml:.0f} ml", flush=True)
    args = (truth.t1w, truth.t1w_affine, truth.mag[0], truth.gre_affine, template)
    variants = {"ANTs": AnatParams(skull_strip=False), "ANTs + skull strip": AnatParams(skull_strip=True),
                "ANTs + skull strip, T1 normalisation": AnatParams(skull_strip=True, normalise_on="t1")}
    for name, params in variants.items():
        t0 = time.perf_counter()
        r = process_anatomy(*args, params)
        total = time.perf_counter() - t0
        warped = np.nan_to_num(sample_at(truth.gm_t1, truth.t1w_affine, r.t1_points, cval=0.0))
        steps = ", ".join(f"{k} {v:.1f}" for k, v in r.seconds.items())
        print(f"  {name:<36}: {total:6.1f} s ({steps})", flush=True)
        print(f"      normalisation Dice {dice(warped > 0.5, template.gm > 0.5):.3f}, segmentation GM Dice "
              f"{dice(r.gm > 0.5, truth.gm_t1 > 0.5):.3f}, TIV {r.tiv_ml:.0f} ml "
              f"({100 * (r.tiv_ml / truth.tiv_ml - 1):+.1f} %), QC {r.qc_gm_corr:.3f}", flush=True)
    try:
        mapping, t_aff, t_syn = dipy_normalise(truth.t1w, truth.t1w_affine, template)
    except ImportError:
        print("  dipy: not installed (pip install dipy)")
        return
    warped = mapping.transform(np.asarray(truth.gm_t1, dtype=np.float64), interpolation="linear")
    print(f"  dipy affine + SyN(CC): {t_aff + t_syn:6.1f} s (affine {t_aff:.1f}, SyN {t_syn:.1f}); "
          f"normalisation Dice {dice(warped > 0.5, template.gm > 0.5):.3f}", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--voxel", type=float, default=2.0)
    ap.add_argument("--subjects", type=int, default=2)
    ap.add_argument("--full", action="store_true", help="also one subject at 1 mm")
    args = ap.parse_args()
    spec = replace(preset("tiny", n_echoes=2, voxel_size=args.voxel), n_per_group={"ALS": 2, "NC": 2}, seed=3)
    template = load_template(args.voxel)
    for i in range(args.subjects):
        one_subject(spec, i, template)
    if args.full:
        one_subject(replace(spec, voxel_size=1.0), 0, load_template(1.0))


if __name__ == "__main__":
    main()
