"""Anatomy chain: seconds per step and accuracy, variants of ``AnatParams`` side by side on the same subjects.

Run by hand:

    .venv/bin/python benchmarks/anat.py [--voxel 2] [--mni-voxel MM] [--subjects 2] [--full]
        [--set KEY=VALUE[,KEY=VALUE...]] ... [--no-builtin] [--dipy]

A simulated subject has a known T1→MNI mapping, true tissue maps, TIV and modulated GM.  Each
variant runs ``engine.anat.process_anatomy`` on the same subject, one after the other in this
process; printed per variant:
- seconds of each step;
- normalisation Dice: the subject's TRUE GM carried to MNI through the estimated mapping vs the
  template GM (> 0.5), before (no normalisation) and after;
- segmentation Dice (GM > 0.5 vs truth on the T1 grid) and TIV and GM volume errors against the truth;
- the GRE → T1 coregistration's error against the simulator's head motion (T1 brain voxels);
- VBM fidelity: the correlation, in the template brain, of the smoothed modulated GM (the map the
  GLM sees) with the truth's modulated GM smoothed alike, and the total of the modulated GM against
  the truth's (what a volume-preserving VBM keeps).

The built-in variants are the default, no skull strip, and the T1 normalisation; ``--set`` adds a
variant (``--set working_voxel_mm=1.5``), ``--no-builtin`` keeps the default and the ``--set`` ones.
``--mni-voxel`` picks the output grid (default: the subject's voxel size, as before; the default study
uses 2 mm).  ``--full`` adds one subject at 1 mm.  ``--dipy`` adds dipy's affine + SyN (CC) on the
same images (pip install dipy).
"""

from __future__ import annotations

import argparse
import ast
import time
from dataclasses import replace

import numpy as np

from ferritin.cohort.simulate import preset, sample_participants, simulate_subject
from ferritin.cohort.templates import load_template
from ferritin.engine.anat import AnatParams, process_anatomy, sample_at, smooth_fwhm


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


def true_modulated_gm(truth, spec, template, fwhm_mm):
    """The truth's modulated GM, smoothed as the pipeline smooths, on ``template``'s grid, and its total (ml)."""
    truth_grid = load_template(spec.voxel_size).grid
    gm_mod = np.asarray(truth.mni["gm_mod"], np.float32)
    total_ml = float(gm_mod.sum()) * truth_grid.voxel_size**3 / 1000.0
    smooth = smooth_fwhm(gm_mod, fwhm_mm, (truth_grid.voxel_size,) * 3)
    return np.nan_to_num(sample_at(smooth, truth_grid.affine, mni_world(template.grid), cval=0.0)), total_ml


def coregistration_error(truth, gre_to_t1):
    """Distance (mm) between the estimated and the true GRE position of every T1 brain voxel."""
    ijk = np.argwhere(truth.gm_t1 + truth.wm_t1 > 0.5).T
    t1_xyz = truth.t1w_affine[:3, :3] @ ijk + truth.t1w_affine[:3, 3:4]
    true = np.linalg.inv(truth.placement.motion)  # the simulator's motion maps GRE points to T1 points
    moved = [m[:3, :3] @ t1_xyz + m[:3, 3:4] for m in (np.asarray(gre_to_t1, float), true)]
    return np.linalg.norm(moved[0] - moved[1], axis=0)


def one_subject(spec, index, template, variants, with_dipy=False):
    truth = simulate_subject(spec, sample_participants(spec).iloc[index].to_dict(), index)
    grid = template.grid
    brain = template.brain_mask
    before = dice(np.nan_to_num(sample_at(truth.gm_t1, truth.t1w_affine, mni_world(grid), cval=0.0)) > 0.5,
                  template.gm > 0.5)
    t1_vox_ml = float(abs(np.linalg.det(truth.t1w_affine[:3, :3]))) / 1000.0
    true_gm_ml = float(truth.gm_t1.sum()) * t1_vox_ml
    print(f"subject {index} at {spec.voxel_size:g} mm, MNI grid {grid.voxel_size:g} mm: normalisation Dice before "
          f"{before:.3f}; true TIV {truth.tiv_ml:.0f} ml, GM {true_gm_ml:.0f} ml", flush=True)
    args = (truth.t1w, truth.t1w_affine, truth.mag[0], truth.gre_affine, template)
    for name, params in variants.items():
        t0 = time.perf_counter()
        r = process_anatomy(*args, params)
        total = time.perf_counter() - t0
        warped = np.nan_to_num(sample_at(truth.gm_t1, truth.t1w_affine, r.t1_points, cval=0.0))
        true_mod, true_mod_ml = true_modulated_gm(truth, spec, template, params.vbm_fwhm_mm)
        vbm_corr = float(np.corrcoef(r.gm_mod_smooth[brain], true_mod[brain])[0, 1])
        mod_ml = float(r.gm_mod.sum()) * grid.voxel_size**3 / 1000.0
        coreg = coregistration_error(truth, r.gre_to_t1)
        steps = ", ".join(f"{k} {v:.1f}" for k, v in r.seconds.items())
        print(f"  {name:<40}: {total:6.1f} s ({steps})", flush=True)
        print(f"      normalisation Dice {dice(warped > 0.5, template.gm > 0.5):.3f}, segmentation GM Dice "
              f"{dice(r.gm > 0.5, truth.gm_t1 > 0.5):.3f}, TIV {r.tiv_ml:.0f} ml "
              f"({100 * (r.tiv_ml / truth.tiv_ml - 1):+.1f} %), GM {r.gm_ml:.0f} ml "
              f"({100 * (r.gm_ml / true_gm_ml - 1):+.1f} %), QC {r.qc_gm_corr:.3f}", flush=True)
        print(f"      VBM: smoothed modulated GM vs truth r = {vbm_corr:.4f}; modulated GM total {mod_ml:.0f} ml "
              f"(truth {true_mod_ml:.0f} ml, {100 * (mod_ml / true_mod_ml - 1):+.1f} %); GRE→T1 error "
              f"mean {coreg.mean():.3f}, max {coreg.max():.3f} mm", flush=True)
    if not with_dipy:
        return
    try:
        mapping, t_aff, t_syn = dipy_normalise(truth.t1w, truth.t1w_affine, template)
    except ImportError:
        print("  dipy: not installed (pip install dipy)")
        return
    warped = mapping.transform(np.asarray(truth.gm_t1, dtype=np.float64), interpolation="linear")
    print(f"  dipy affine + SyN(CC): {t_aff + t_syn:6.1f} s (affine {t_aff:.1f}, SyN {t_syn:.1f}); "
          f"normalisation Dice {dice(warped > 0.5, template.gm > 0.5):.3f}", flush=True)


def parse_variant(text: str) -> AnatParams:
    """``key=value,key=value`` (values as Python literals) applied to the default ``AnatParams``."""
    fields = {}
    for item in filter(None, text.split(",")):
        key, _, value = item.partition("=")
        try:
            fields[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            fields[key.strip()] = value.strip()
    unknown = set(fields) - set(AnatParams.__dataclass_fields__)
    if unknown:
        raise ValueError(f"--set {text}: {sorted(unknown)} not AnatParams fields")
    return AnatParams(**fields)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--voxel", type=float, default=2.0)
    ap.add_argument("--mni-voxel", type=float, default=None, help="output grid (mm); default: --voxel")
    ap.add_argument("--subjects", type=int, default=2)
    ap.add_argument("--first", type=int, default=0, help="index of the first subject")
    ap.add_argument("--full", action="store_true", help="also one subject at 1 mm")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE[,...]", help="add a variant")
    ap.add_argument("--no-builtin", action="store_true", help="only the default and the --set variants")
    ap.add_argument("--dipy", action="store_true", help="add dipy's affine + SyN")
    args = ap.parse_args()
    variants = {"default": AnatParams()}
    if not args.no_builtin:
        variants.update({"no skull strip": AnatParams(skull_strip=False),
                         "T1 normalisation": AnatParams(normalise_on="t1")})
    try:
        variants.update({text: parse_variant(text) for text in args.set})
    except ValueError as exc:
        ap.error(str(exc))
    spec = replace(preset("tiny", n_echoes=2, voxel_size=args.voxel), n_per_group={"ALS": 2, "NC": 2}, seed=3)
    template = load_template(args.mni_voxel or args.voxel)
    for i in range(args.first, args.first + args.subjects):
        one_subject(spec, i, template, variants, args.dipy)
    if args.full:
        one_subject(replace(spec, voxel_size=1.0), 0, load_template(args.mni_voxel or 1.0), variants, args.dipy)


if __name__ == "__main__":
    main()
