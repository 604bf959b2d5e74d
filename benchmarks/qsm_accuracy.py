"""QSM accuracy on simulated subjects: each inversion from the true local field and through the full chain.

Run by hand:  .venv/bin/python benchmarks/qsm_accuracy.py [--voxel 3] [--subjects 0 1] [--echoes 6]
                  [--methods tv star] [--set vsharp_min_radius_vox=1 ...] [--brain anatomy] [--truncation 3]

``--brain anatomy`` bounds the full chain's mask by the subject's T1 brain mask from the anatomy
stage (ANTs, ~40 s per subject at 3 mm), as the pipeline does; the default uses the magnitude mask
alone, as ``reconstruct_qsm`` does when it is given no brain mask.

Printed per subject and method:
- NRMSE = 100 * ||chi - chi_true|| / ||chi_true|| and HFEN, inside the mask, both demeaned there
  (from the true local field: the true brain mask; full chain: the chain's own mask within the brain);
- deep-grey error: mean over caudate, putamen, pallidum and thalamus (each side) of
  |mean estimated chi - mean true chi|, both referenced to the mean over the chain's mask;
- the fraction of the brain (and of the deep-grey nuclei) the chain's mask covers.
Then the median over subjects of each figure.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from scipy import ndimage

from ferritin.cohort.dipole import b0_direction
from ferritin.cohort.simulate import preset, sample_participants, simulate_subject
from ferritin.cohort.templates import atlas_labels, load_template
from ferritin.engine.anat import process_anatomy, t1_brain_on_gre
from ferritin.engine.qsm.chain import QSMParams, reconstruct_qsm
from ferritin.engine.qsm.inversion import ilsqr, star_qsm, tkd, tv_admm
from ferritin.engine.qsm.metrics import hfen, nrmse, region_mean_errors

METHODS = {"tkd": tkd, "tv": tv_admm, "star": star_qsm, "ilsqr": ilsqr}
NUCLEI = ("Caudate", "Putamen", "Pallidum", "Thalamus")


def nuclei_labels(truth, voxel):
    """Atlas label of every GRE voxel, through the simulator's true placement, and the nuclei's names."""
    tpl = load_template(voxel)
    ijk = np.indices(truth.mag.shape[1:], dtype=np.float64)
    world = np.einsum("ab,b...->a...", truth.gre_affine[:3, :3], ijk) + truth.gre_affine[:3, 3].reshape(3, 1, 1, 1)
    pts = truth.placement.to_mni(world, gre=True)
    inv = np.linalg.inv(tpl.grid.affine)
    ijk = np.einsum("ab,b...->a...", inv[:3, :3], pts) + inv[:3, 3].reshape(3, 1, 1, 1)
    labels = ndimage.map_coordinates(tpl.atlas, ijk, order=0, mode="constant", cval=0)
    names = atlas_labels()["name"].to_dict()
    return labels, {c: n for c, n in names.items() if any(k in n for k in NUCLEI)}


def deep_grey_error(chi, truth, mask, labels, nuclei):
    errs = [est - tru for est, tru in region_mean_errors(chi, truth.chi_native, mask, labels, nuclei).values()]
    brain = truth.brain_mask_native.astype(bool)
    cover = np.mean([((labels == c) & mask).sum() / max(((labels == c) & brain).sum(), 1) for c in nuclei])
    return float(np.mean(np.abs(errs))), float(cover)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--voxel", type=float, default=3.0)
    ap.add_argument("--subjects", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--echoes", type=int, default=6)
    ap.add_argument("--methods", nargs="+", choices=sorted(METHODS), default=list(METHODS))
    ap.add_argument("--set", nargs="+", default=[], metavar="FIELD=VALUE",
                    help="chain parameters (engine.qsm.chain.QSMParams fields) for the full-chain runs")
    ap.add_argument("--truncation", type=int, default=1,
                    help="simulate the scanner's k-space truncation: object built this many times finer "
                         "(cohort.simulate.SimulationSpec.kspace_truncation; 1 = none)")
    ap.add_argument("--brain", choices=("magnitude", "anatomy"), default="magnitude",
                    help="what bounds the full chain's mask: the magnitude alone, or the T1 brain mask as well")
    args = ap.parse_args()
    overrides = {}
    for item in args.set:
        key, _, value = item.partition("=")
        if key not in QSMParams.__dataclass_fields__:
            ap.error(f"--set {item}: {key!r} is not a QSMParams field")
        overrides[key] = type(getattr(QSMParams(), key) or 0.0)(value)
    spec = preset("tiny", voxel_size=args.voxel, n_echoes=args.echoes, kspace_truncation=args.truncation)
    table = sample_participants(spec)
    vs = (args.voxel,) * 3
    rows = []
    for i in args.subjects:
        t = simulate_subject(spec, table.iloc[i].to_dict(), i)
        tm = t.brain_mask_native.astype(bool)
        b = b0_direction(t.gre_affine)
        labels, nuclei = nuclei_labels(t, args.voxel)
        brain = None
        if args.brain == "anatomy":
            a = process_anatomy(t.t1w, t.t1w_affine, t.mag[0], t.gre_affine, load_template(max(2.0, args.voxel)))
            brain = t1_brain_on_gre(a.brain_mask, t.t1w_affine, a.gre_to_t1, t.mag.shape[1:], t.gre_affine)
        for name in args.methods:
            est = METHODS[name](t.local_field_ppm, tm, vs, b)
            dg, _ = deep_grey_error(est, t, tm, labels, nuclei)
            rows.append((name, "true local field", nrmse(est, t.chi_native, tm), hfen(est, t.chi_native, tm), dg, 1.0, 1.0))
            t0 = time.perf_counter()
            params = QSMParams(inversion=name, **overrides)
            chi, m = reconstruct_qsm(t.mag, t.phase, t.echo_times, t.gre_affine, spec.b0, params, brain=brain)
            mm = m & tm
            dg, dcov = deep_grey_error(chi, t, mm, labels, nuclei)
            rows.append((name, "full chain", nrmse(chi, t.chi_native, mm), hfen(chi, t.chi_native, mm), dg,
                         mm.sum() / tm.sum(), dcov))
            for r in rows[-2:]:
                print(f"{args.voxel:g} mm sub {i} {r[0]:5s} {r[1]:16s} NRMSE {r[2]:5.1f} %  HFEN {r[3]:5.1f} %  "
                      f"deep-grey |err| {r[4]:.4f} ppm  mask covers {r[5]:.2f} of the brain, {r[6]:.2f} of the nuclei"
                      + (f"  ({time.perf_counter() - t0:.0f} s)" if r[1] == "full chain" else ""), flush=True)
    print(f"\nmedian over {len(args.subjects)} subjects at {args.voxel:g} mm:")
    for name in args.methods:
        for source in ("true local field", "full chain"):
            sel = np.array([r[2:] for r in rows if r[0] == name and r[1] == source])
            med = np.median(sel, axis=0)
            print(f"  {name:5s} {source:16s} NRMSE {med[0]:5.1f} %  HFEN {med[1]:5.1f} %  deep-grey |err| {med[2]:.4f} ppm"
                  f"  cover {med[3]:.2f}")


if __name__ == "__main__":
    main()
