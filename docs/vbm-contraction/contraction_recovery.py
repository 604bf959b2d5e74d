"""How much of a planted regional contraction SyN normalisation recovers, with and without the subject's own anatomy.

Run by hand:

    .venv/bin/python docs/vbm-contraction/contraction_recovery.py [--voxel 3] [--effects-preset demo] [--tissue]
        [--warp-mm 3 --anatomies 4] [--registration flow [--flow-prior 0.05]] [--cohort 16]
        [--atrophy composition]
        [--variant '{}' --variant '{"syn_metric": "CC", "syn_sampling": 2}' ...]

Jacobian-modulated VBM sees atrophy only as far as the normalisation undoes
it.  Here the "subject" is the template itself, contracted by the preset's
planted GM effects (``cohort.simulate.atrophy_displacement``, every effect at
full strength), with no bias field and the template's own contrast.  With
``--warp-mm 0`` (the default) nothing else differs: the easiest case there is.
With ``--warp-mm`` > 0 each of ``--anatomies`` subjects first gets the
simulator's random anatomical warp (``cohort.simulate``'s volume-preserving
flow, ``SimulationSpec.warp_smooth_mm`` smooth; the simulated cohorts use 3 mm)
and is registered twice, with and without the contraction, so that what the
registration makes of the anatomy cancels in the difference.

Each variant of ``ants.registration`` keyword arguments (SyN only, identity
start) registers the subject back to the template, and per planted effect it
prints the share of the true volume change that the estimated Jacobian
determinant (of the MNI → subject map) holds:

* in the effect's core (effect map > 0.5), where VBM looks for it, and
  within 15 and 25 mm of the planted peak — a registration that keeps the lost
  volume nearby but spreads it shows a share that grows with the radius;
* ``GM``: the same for the modulated template GM summed over the core;
* and the RMS position error over the brain (mm) of the contracted subject.

``--tissue`` registers the GM and WM maps (the template's against the
subject's) instead of the T1 contrast, with the pipeline's tissue metric
(``AnatParams.tissue_metric``), as its default normalisation does (DARTEL's
inputs); a variant's ``syn_metric`` / ``syn_sampling`` apply to both channels.
``--registration flow`` registers the GM and WM maps with an independent
registration instead (``docs/vbm-contraction/stationary_flow.py``: Gauss-Newton on a
stationary velocity with DARTEL's membrane and bending prior, no ANTs), to
tell SyN's own behaviour from what the maps allow any registration.

``--atrophy composition`` plants the same loss as tissue composition instead
(GM replaced by CSF in the effect regions, no deformation) and prints only
the ``GM core`` share: what modulated GM would see of an atrophy that shows in
the segmentation rather than in the anatomy's shape.

``--cohort N`` measures what a group comparison sees instead: N subjects,
each with its own anatomy (the warp, and the simulator's regional volume
differences, ``SimulationSpec.volume_sd``) and the planted contraction at a
random strength (0 to 1.5 times), registered once each; per effect it prints
the slope and correlation of the estimated core volume (Jacobian summed over
the core) on the true one.  A slope below 1 is volume the registration
misplaces; a correlation below 1 is the noise it adds between subjects.

``docs/vbm-contraction/vbm_fidelity.py`` measures the same on a whole simulated cohort.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from dataclasses import replace

import ants
import numpy as np
from stationary_flow import FlowParams, register_flow  # noqa: E402

from ferritin.cohort.simulate import T1W, atrophy_displacement, effect_maps, preset, volume_fraction  # noqa: E402
from ferritin.cohort.simulate.anatomy import _place_volume_change  # noqa: E402
from ferritin.cohort.simulate.geometry import _placement, _world_coords  # noqa: E402
from ferritin.cohort.templates import load_template  # noqa: E402
from ferritin.engine.anat import AnatParams, jacobian_determinant, sample_at  # noqa: E402
from ferritin.engine.anat.antsbridge import deterministic, points_map, to_ants  # noqa: E402
from ferritin.engine.anat.registration import _metric_mask  # noqa: E402

RADII_MM = (15.0, 25.0)


def anatomy(template, warp_mm: float, seed: int):
    """A placement with no affine part: the simulator's random warp of ``warp_mm`` RMS (none at 0)."""
    spec = preset("demo", warp_mm=warp_mm)
    place = _placement(np.random.default_rng([seed, 2]), spec, 1.0)
    return replace(place, affine=np.eye(4), motion=np.eye(4))


def planted_loss(template, effects, strength: float = 1.0) -> np.ndarray:
    """Fractional volume loss of every planted GM effect at ``strength`` times its size."""
    maps = effect_maps(template, effects)
    return np.clip(sum(-e.gm_fraction * strength * maps[e.name] for e in effects), -0.5, 0.5)


def with_contraction(place, template, effects):
    """The placement with every planted effect's contraction (at full strength) after the warp."""
    u, _ = atrophy_displacement(planted_loss(template, effects), template.grid.affine)
    return replace(place, atrophy_grid_affine=template.grid.affine, atrophy=u)


def cohort_subject(template, effects, warp_mm: float, index: int):
    """A placement with its own anatomy and regional volume, and the contraction at a random strength (0-1.5)."""
    rng = np.random.default_rng([index, 3])
    strength = float(rng.uniform(0.0, 1.5))
    spec = preset("demo", warp_mm=warp_mm)
    place = anatomy(template, warp_mm, 1000 + index)
    return _place_volume_change(place, planted_loss(template, effects, strength).astype(np.float32), template,
                                rng, spec)


def template_t1(template) -> np.ndarray:
    """The template's anatomy in the simulator's T1 contrast."""
    return (T1W["gm"] * template.gm + T1W["wm"] * template.wm + T1W["csf"] * template.csf).astype(np.float64) * 1000


def subject_images(place, template, gm_loss=None) -> dict:
    """The template's T1 contrast, GM and WM as the placed subject shows them, on the template grid.

    ``gm_loss`` (MNI grid): fraction of the template's GM replaced by CSF first.
    """
    aff = template.grid.affine
    if gm_loss is not None:
        lost = template.gm * gm_loss
        template = replace(template, gm=template.gm - lost, csf=template.csf + lost)
    # The subject at x shows the template at place.to_mni(x).
    to_mni = place.to_mni(_world_coords(template.grid.shape, aff)).reshape(3, -1).astype(np.float64)
    shape = template.grid.shape
    return {"t1": sample_at(template_t1(template), aff, to_mni, order=3, cval=0.0).reshape(shape),
            "gm": sample_at(template.gm, aff, to_mni, order=1, cval=0.0).reshape(shape),
            "wm": sample_at(template.wm, aff, to_mni, order=1, cval=0.0).reshape(shape)}


def register(template, images: dict, kw: dict, tissue: bool, noise_sd: float, seed: int):
    """SyN (identity start) of the subject to the template: Jacobian, point map, modulated GM, seconds.

    ``kw["registration"] == "flow"`` (GM and WM maps only) uses
    :func:`stationary_flow.register_flow` with ``kw["flow_prior"]`` instead.
    """
    aff = template.grid.affine
    if kw.get("registration") == "flow":
        t0 = time.perf_counter()
        disp, _ = register_flow([template.gm, template.wm], [images["gm"], images["wm"]],
                                FlowParams(prior_scale=kw["flow_prior"]))
        ijk = np.indices(template.grid.shape, dtype=np.float64) + disp
        points = np.einsum("ab,b...->a...", aff[:3, :3], ijk) + aff[:3, 3].reshape(3, 1, 1, 1)
        return _modulate(template, images, points, time.perf_counter() - t0)
    rng = np.random.default_rng(seed)
    subject_t1 = images["t1"] + noise_sd * 1000 * rng.standard_normal(images["t1"].shape) * (images["t1"] > 0)
    fixed_arr, moving_arr = (template.gm, images["gm"]) if tissue else (template_t1(template), subject_t1)
    kw = dict(kw)
    if tissue:
        kw["multivariate_extras"] = [(kw["syn_metric"], to_ants(template.wm.astype(np.float32), aff),
                                      to_ants(images["wm"].astype(np.float32), aff), 1, kw["syn_sampling"])]
    mask = _metric_mask(template)
    t0 = time.perf_counter()
    with deterministic(1), tempfile.TemporaryDirectory() as tmp:
        moving = to_ants(moving_arr.astype(np.float32), aff)
        reg = ants.registration(fixed=to_ants(fixed_arr.astype(np.float32), aff), moving=moving,
                                type_of_transform="SyNOnly", initial_transform="Identity", mask=mask,
                                outprefix=os.path.join(tmp, "r_"), random_seed=1, **kw)
        points = points_map(template.grid.shape, aff, reg["fwdtransforms"], moving)
    return _modulate(template, images, points, time.perf_counter() - t0)


def _modulate(template, images, points, seconds):
    jac = np.nan_to_num(jacobian_determinant(points, (template.grid.voxel_size,) * 3), nan=1.0)
    gm_mod = np.nan_to_num(sample_at(images["gm"], template.grid.affine, points, order=1, cval=0.0)) * jac
    return jac, points, gm_mod, seconds


def run_cohort(template, effects, regions, args, kw):
    """--cohort: slope and correlation of the estimated on the true core volume over random subjects."""
    true, est, seconds = {e.name: [] for e in effects}, {e.name: [] for e in effects}, []
    for i in range(args.cohort):
        place = cohort_subject(template, effects, args.warp_mm, i)
        vf = volume_fraction(place, template)
        jac, _, _, s = register(template, subject_images(place, template), kw, args.tissue, args.noise, i)
        seconds.append(s)
        for e in effects:
            core = regions[e.name]["core"]
            true[e.name].append(float(vf[core].sum()))
            est[e.name].append(float(jac[core].sum()))
    print(f"{args.cohort} subjects, median {statistics.median(seconds):.0f} s per registration")
    for e in effects:
        t, m = np.array(true[e.name]), np.array(est[e.name])
        slope = np.polyfit(t, m, 1)[0]
        print(f"  {e.name}: estimated on true core volume: slope {slope:.2f}, r {np.corrcoef(t, m)[0, 1]:.2f} "
              f"(true volume s.d. {t.std() / t.mean():.1%} of its mean)")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--voxel", type=float, default=3.0, help="template grid (mm)")
    ap.add_argument("--effects-preset", default="demo", help="simulator preset whose effects are planted")
    ap.add_argument("--noise", type=float, default=0.02, help="T1 noise s.d. (white matter is 0.85)")
    ap.add_argument("--tissue", action="store_true", help="register GM and WM maps instead of T1 contrast")
    ap.add_argument("--warp-mm", type=float, default=0.0,
                    help="RMS (mm) of each subject's random anatomical warp (0: the template's own anatomy)")
    ap.add_argument("--anatomies", type=int, default=4, help="random anatomies averaged over when --warp-mm > 0")
    ap.add_argument("--registration", choices=("syn", "flow"), default="syn",
                    help="the pipeline's SyN, or the independent stationary-velocity flow (GM and WM maps)")
    ap.add_argument("--flow-prior", type=float, default=FlowParams().prior_scale,
                    help="scale of the flow's DARTEL prior schedule (--registration flow)")
    ap.add_argument("--atrophy", choices=("contraction", "composition"), default="contraction",
                    help="plant the GM loss as a contraction (the simulator's model) or as GM replaced by CSF")
    ap.add_argument("--cohort", type=int, default=0,
                    help="N > 0: N subjects of random anatomy and contraction strength, slope and r of core volumes")
    ap.add_argument("--variant", action="append", default=None,
                    help="JSON of ants.registration keywords (repeatable); default: the pipeline's SyN")
    args = ap.parse_args()
    if args.warp_mm < 0 or args.anatomies < 1 or args.cohort < 0:
        raise SystemExit("--warp-mm must be >= 0, --anatomies >= 1 and --cohort >= 0")
    if args.atrophy == "composition" and args.cohort:
        raise SystemExit("--cohort measures volumes, which a composition change leaves as they are")
    if args.registration == "flow":
        if not args.tissue:
            raise SystemExit("--registration flow registers GM and WM maps: add --tissue")
        if args.variant:
            raise SystemExit("--variant sets ANTs keywords, which --registration flow does not use")
    variants = [json.loads(v) for v in (args.variant or ["{}"])]
    template = load_template(args.voxel)
    effects = preset(args.effects_preset).effects
    if not effects:
        raise SystemExit(f"preset {args.effects_preset!r} plants no effects")
    maps = effect_maps(template, effects)
    xyz = _world_coords(template.grid.shape, template.grid.affine)
    regions = {}
    for e in effects:
        dist = np.sqrt(sum((xyz[c] - e.peak_mni[c]) ** 2 for c in range(3)))
        regions[e.name] = {"core": maps[e.name] > 0.5, **{f"{r:g} mm": dist <= r for r in RADII_MM}}
    defaults = AnatParams()
    if args.registration == "flow":  # --variant is refused with it: one run
        kws = [{"registration": "flow", "flow_prior": args.flow_prior}]
    else:
        kws = [{"syn_metric": defaults.tissue_metric if args.tissue else defaults.syn_metric,
                "syn_sampling": defaults.tissue_sampling if args.tissue else defaults.syn_sampling,
                **variant} for variant in variants]
        for kw in kws:
            kw["reg_iterations"] = tuple(kw.get("reg_iterations", defaults.tissue_iterations if args.tissue
                                                else defaults.syn_iterations))
    label = (f"flow, prior x {args.flow_prior:g}" if args.registration == "flow" else "SyN")
    if args.cohort:
        print(f"{args.voxel:g} mm, effects of preset {args.effects_preset!r}, "
              f"{'GM and WM maps' if args.tissue else 'T1 contrast'}, own anatomy (warp {args.warp_mm:g} mm RMS, "
              f"regional volume s.d. {preset('demo').volume_sd:.0%}), {label}")
        for variant, kw in zip(variants, kws):
            print(f"{json.dumps(variant)}:", end=" ")
            run_cohort(template, effects, regions, args, kw)
        return
    world = xyz.reshape(3, -1).astype(np.float64)
    seeds = list(range(args.anatomies)) if args.warp_mm > 0 else [0]
    # Per anatomy: the placements without and with the atrophy, their images and true volume fractions.
    cases = []
    composition = args.atrophy == "composition"
    loss = planted_loss(template, effects)
    for seed in seeds:
        plain = anatomy(template, args.warp_mm, seed)
        atrophied = plain if composition else with_contraction(plain, template, effects)
        vf_plain, vf = volume_fraction(plain, template), volume_fraction(atrophied, template)
        cases.append({"seed": seed, "vf_plain": vf_plain, "vf": vf,
                      # modulated GM's true change on the MNI grid (the warp keeps volume)
                      "gm_change": -template.gm * loss if composition else template.gm * (vf - vf_plain),
                      "images_plain": subject_images(plain, template) if args.warp_mm > 0 else None,
                      "images": subject_images(atrophied, template, gm_loss=loss if composition else None),
                      # the placement has no affine part: before the warp is the subject's own position
                      "true_points": atrophied.mni_preimages(world, iterations=8)[1]})
    print(f"{args.voxel:g} mm, effects of preset {args.effects_preset!r}, "
          f"{'GM and WM maps' if args.tissue else 'T1 contrast'}, "
          + (f"{len(seeds)} random anatomies (warp {args.warp_mm:g} mm RMS)" if args.warp_mm > 0
             else "the template's own anatomy") + f", {label}, GM loss as {args.atrophy}")
    for e in effects:
        core = regions[e.name]["core"]
        if composition:
            print(f"  {e.name}: {int(core.sum())} core voxels, GM fraction lost {loss[core].mean():.3f}")
            continue
        vf = cases[0]["vf"] / cases[0]["vf_plain"]
        print(f"  {e.name}: {int(core.sum())} core voxels, true volume fraction {vf[core].mean():.3f}")
    brain = template.brain_mask.ravel()
    for variant, kw in zip(variants, kws):
        shares = {e.name: {k: [] for k in [*([] if composition else regions[e.name]), "GM core"]} for e in effects}
        seconds, rms = [], []
        for case in cases:
            jac, points, gm_mod, s = register(template, case["images"], kw, args.tissue, args.noise, case["seed"])
            seconds.append(s)
            rms.append(float(np.sqrt(np.nanmean(((points.reshape(3, -1) - case["true_points"]) ** 2)
                                                .sum(axis=0)[brain]))))
            if case["images_plain"] is not None:
                jac0, _, gm_mod0, s = register(template, case["images_plain"], kw, args.tissue, args.noise,
                                               case["seed"])
                seconds.append(s)
            else:  # the template's own anatomy: the registration without the contraction is the identity
                jac0, gm_mod0 = np.ones_like(jac), template.gm.astype(np.float64)
            d_est, d_true = jac - jac0, case["vf"] - case["vf_plain"]
            for e in effects:
                for k, m in regions[e.name].items():
                    if k in shares[e.name]:
                        shares[e.name][k].append(float(d_est[m].sum() / d_true[m].sum()))
                core = regions[e.name]["core"]
                shares[e.name]["GM core"].append(float((gm_mod - gm_mod0)[core].sum()
                                                       / case["gm_change"][core].sum()))
        print(f"{json.dumps(variant)}: median {statistics.median(seconds):.0f} s per registration, "
              f"RMS position error {statistics.mean(rms):.2f} mm")
        for e in effects:
            text = ", ".join(f"{k} {statistics.mean(v):.0%}" + (f" ({min(v):.0%}–{max(v):.0%})" if len(v) > 1 else "")
                             for k, v in shares[e.name].items())
            print(f"  {e.name}: {'GM' if composition else 'volume'} change recovered: {text}")


if __name__ == "__main__":
    main()
