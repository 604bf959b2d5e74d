"""How much of a planted regional contraction SyN normalisation recovers, in ideal conditions.

Run by hand:

    .venv/bin/python benchmarks/contraction_recovery.py [--voxel 3] [--effects-preset demo]
        [--variant '{}' --variant '{"syn_metric": "CC", "syn_sampling": 2}' ...]

Jacobian-modulated VBM sees atrophy only as far as the normalisation undoes
it.  Here the "subject" is the template itself, contracted by the preset's
planted GM effects (``cohort.simulate.atrophy_displacement``, every effect at
full strength), with no other anatomical difference, no bias field and the
template's own contrast: the easiest case there is.  Each variant of
``ants.registration`` keyword arguments (SyN only, identity start) registers it
back to the template, and per effect core (effect map > 0.5) it prints:

* ``J``: the mean Jacobian determinant of the estimated MNI → subject map
  against the true volume fraction (``1 / det`` of the planted map), and the
  share of the contraction recovered, ``(1 - J) / (1 - true)``;
* ``GM``: the modulated template GM summed over the core against the truth;
* the RMS position error over the brain.

``--tissue`` registers the GM and WM maps (the template's against the
contracted ones) instead of the T1 contrast, with the pipeline's tissue metric
(``AnatParams.tissue_metric``), as its default normalisation does (DARTEL's
inputs); a variant's ``syn_metric`` / ``syn_sampling`` apply to both channels.  In a real cohort the recovered share is lower still: random anatomy,
regional volume differences and a template of another contrast all compete
with the planted effect (``benchmarks/vbm_fidelity.py`` measures that).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import ants
import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cohort.simulate import T1W, _sample_field, _world_coords, atrophy_displacement, effect_maps, preset  # noqa: E402
from cohort.templates import load_template  # noqa: E402
from engine.anat.antsbridge import deterministic, points_map, to_ants  # noqa: E402
from engine.anat.stages import AnatParams, jacobian_determinant, sample_at  # noqa: E402


def contracted_subject(template, effects, noise_sd: float, seed: int = 0):
    """Template T1 contrast and GM pulled through the planted contraction, and the truth."""
    aff = template.grid.affine
    maps = effect_maps(template, effects)
    loss = sum(-e.gm_fraction * maps[e.name] for e in effects)
    u, fraction = atrophy_displacement(np.clip(loss, -0.5, 0.5), aff)
    t1 = (T1W["gm"] * template.gm + T1W["wm"] * template.wm + T1W["csf"] * template.csf).astype(np.float64) * 1000
    world = _world_coords(template.grid.shape, aff).reshape(3, -1).astype(np.float64)
    # The subject -> MNI map is x + u(x): the subject at x shows the template at x + u(x).
    to_mni = world + u.reshape(3, -1)
    subject_t1 = sample_at(t1, aff, to_mni, order=3, cval=0.0).reshape(t1.shape)
    subject_gm = sample_at(template.gm, aff, to_mni, order=1, cval=0.0).reshape(t1.shape)
    subject_wm = sample_at(template.wm, aff, to_mni, order=1, cval=0.0).reshape(t1.shape)
    rng = np.random.default_rng(seed)
    subject_t1 = subject_t1 + noise_sd * 1000 * rng.standard_normal(t1.shape) * (subject_t1 > 0)
    cores = {name: w > 0.5 for name, w in maps.items()}
    # Where each MNI voxel y lies in the subject: x with x + u(x) = y (fixed point; u is smooth and small).
    x = world.copy()
    for _ in range(8):
        x = world - _sample_field(u, aff, x, order=1)
    return t1, subject_t1, subject_gm, subject_wm, fraction, x, cores


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--voxel", type=float, default=3.0, help="template grid (mm)")
    ap.add_argument("--effects-preset", default="demo", help="simulator preset whose effects are planted")
    ap.add_argument("--noise", type=float, default=0.02, help="T1 noise s.d. (white matter is 0.85)")
    ap.add_argument("--tissue", action="store_true", help="register GM and WM maps instead of T1 contrast")
    ap.add_argument("--variant", action="append", default=None,
                    help="JSON of ants.registration keywords (repeatable); default: the pipeline's SyN")
    args = ap.parse_args()
    variants = [json.loads(v) for v in (args.variant or ["{}"])]
    template = load_template(args.voxel)
    effects = preset(args.effects_preset).effects
    if not effects:
        raise SystemExit(f"preset {args.effects_preset!r} plants no effects")
    t1, subject_t1, subject_gm, subject_wm, fraction, true_points, cores = contracted_subject(
        template, effects, args.noise)
    aff = template.grid.affine
    fixed_arr, moving_arr = (template.gm, subject_gm) if args.tissue else (t1, subject_t1)
    print(f"{args.voxel:g} mm, effects of preset {args.effects_preset!r}, "
          f"{'GM and WM maps' if args.tissue else 'T1 contrast'}")
    for name, core in cores.items():
        print(f"  {name}: {int(core.sum())} voxels, true volume fraction {fraction[core].mean():.3f}, "
              f"GM {template.gm[core].sum():.1f} -> {(template.gm * fraction)[core].sum():.1f} voxel units")
    mask = to_ants(ndimage.binary_dilation(template.brain_mask, iterations=2).astype(np.float32), aff)
    for variant in variants:
        defaults = AnatParams()
        kw = {"syn_metric": defaults.tissue_metric if args.tissue else defaults.syn_metric,
              "syn_sampling": defaults.tissue_sampling if args.tissue else defaults.syn_sampling,
              "reg_iterations": defaults.syn_iterations, **variant}
        kw["reg_iterations"] = tuple(kw["reg_iterations"])
        if args.tissue:
            kw["multivariate_extras"] = [(kw["syn_metric"], to_ants(template.wm.astype(np.float32), aff),
                                          to_ants(subject_wm.astype(np.float32), aff), 1, kw["syn_sampling"])]
        t0 = time.perf_counter()
        with deterministic(1), tempfile.TemporaryDirectory() as tmp:
            moving = to_ants(moving_arr.astype(np.float32), aff)
            reg = ants.registration(fixed=to_ants(fixed_arr.astype(np.float32), aff), moving=moving,
                                    type_of_transform="SyNOnly", initial_transform="Identity", mask=mask,
                                    outprefix=os.path.join(tmp, "r_"), random_seed=1, **kw)
            points = points_map(template.grid.shape, aff, reg["fwdtransforms"], moving)
        seconds = time.perf_counter() - t0
        jac = jacobian_determinant(points, (args.voxel,) * 3)
        gm_mod = np.nan_to_num(sample_at(subject_gm, aff, points, order=1, cval=0.0)) * np.nan_to_num(jac)
        est = points.reshape(3, -1)
        brain = template.brain_mask.ravel()
        rms = float(np.sqrt(np.nanmean(((est - true_points) ** 2).sum(axis=0)[brain])))
        print(f"{json.dumps(variant)}: {seconds:.0f} s, RMS position error {rms:.2f} mm")
        for name, core in cores.items():
            true_j = float(fraction[core].mean())
            est_j = float(np.nanmean(jac[core]))
            share = (1 - est_j) / (1 - true_j) if true_j < 1 else float("nan")
            gm0, gm_true, gm_est = (float(template.gm[core].sum()), float((template.gm * fraction)[core].sum()),
                                    float(gm_mod[core].sum()))
            print(f"  {name}: J {est_j:.3f} vs {true_j:.3f} (recovered {share:.0%}); "
                  f"GM {gm_est:.1f} vs {gm_true:.1f} (recovered {(gm0 - gm_est) / (gm0 - gm_true):.0%})")


if __name__ == "__main__":
    main()
