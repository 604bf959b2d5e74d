"""A subject's anatomy in MNI space: tissue maps, head layers, planted effects and volume change."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from nibabel.affines import voxel_sizes
from scipy import ndimage

from ..templates import Template
from .geometry import Placement, _sample_field, _world_coords, atrophy_displacement
from .spec import SimulationSpec, severity_factor
from .tissue import CHI, NUCLEI

__all__ = []

def effect_maps(template: Template, effects) -> dict[str, np.ndarray]:
    """Smooth effect weights (0..1) of each planted effect on the template grid."""
    grid = template.grid
    out = {}
    xyz = _world_coords(grid.shape, grid.affine)
    for e in effects:
        region = template.region(e.region)
        r2 = sum((xyz[c] - e.peak_mni[c]) ** 2 for c in range(3))
        core = (region & (r2 <= e.radius_mm**2)).astype(np.float32)
        if core.sum() == 0:
            raise ValueError(f"effect {e.name}: no voxel of {e.region} within {e.radius_mm} mm of {e.peak_mni}")
        sigma = e.smooth_mm / 2.3548 / grid.voxel_size
        w = ndimage.gaussian_filter(core, sigma) if sigma > 0 else core
        out[e.name] = (w / w.max()).astype(np.float32)
    return out


def _head_layers(template: Template):
    """Skull, scalp and air-sinus masks (float) around the template brain."""
    vs = template.grid.voxel_size
    brain = template.brain_mask | (template.gm + template.wm + template.csf > 0.3)
    dist = ndimage.distance_transform_edt(~brain, sampling=vs)
    xyz = _world_coords(template.grid.shape, template.grid.affine)
    # Below the brain the head continues as the neck/face: extend the layers
    # downwards so the head has no artificial bottom edge near the brain.
    low = xyz[2] < -40
    skull = (dist > 2.0) & (dist <= 8.0)
    scalp = (dist > 8.0) & (dist <= 14.0)
    neck = low & (np.hypot(xyz[0] / 65.0, (xyz[1] + 20.0) / 80.0) <= 1.0) & ~brain
    skull |= neck & (dist <= 8.0)
    scalp |= neck & (dist > 8.0)
    csf_rim = (dist > 0) & (dist <= 2.0)
    # Frontal sinus and sphenoid sinus (air pockets close to the brain).
    sinus = np.zeros(template.grid.shape, bool)
    for c, r in (((0.0, 62.0, 4.0), (14.0, 7.0, 9.0)), ((0.0, 12.0, -32.0), (13.0, 11.0, 9.0))):
        e = sum(((xyz[a] - c[a]) / r[a]) ** 2 for a in range(3))
        # a bony wall and the meninges keep air pockets a few mm from the brain
        sinus |= (e <= 1.0) & (dist > 6.0)
    return skull.astype(np.float32), scalp.astype(np.float32), csf_rim.astype(np.float32), sinus.astype(np.float32)


def subject_mni_maps(template: Template, spec: SimulationSpec, row: dict, rng) -> dict[str, np.ndarray]:
    """The subject's anatomy and susceptibility on the template (MNI) grid."""
    effects = effect_maps(template, spec.effects)
    age_dev = row["age"] - spec.age_mean
    gm = template.gm.copy()
    wm = template.wm.copy()
    csf = template.csf.copy()
    loss = np.full(gm.shape, spec.gm_loss_per_year * age_dev, np.float32)
    patient = row["group"] == spec.patient_group
    sev_factor = {}
    # Planted GM changes are volume changes (the region shrinks, see
    # atrophy_displacement), applied when the subject is placed, except for
    # the share gm_composition of each, which is like the age effect:
    # diffuse thinning, GM replaced by CSF where it is.
    atrophy = np.zeros(gm.shape, np.float32)
    for e in spec.effects:
        sev_factor[e.name] = {m: float(severity_factor(e, row["severity"], m)) if patient else 0.0
                              for m in ("chi", "gm")}
        lost_gm = -e.gm_fraction * sev_factor[e.name]["gm"] * effects[e.name]
        if e.gm_composition > 0:
            contracted = lost_gm * (1 - e.gm_composition)
            # (1 - replaced) * (1 - contracted) = 1 - lost_gm: the region keeps 1 + gm_fraction of its GM
            loss = loss + (1 - (1 - lost_gm) / (1 - contracted))
            lost_gm = contracted
        atrophy += lost_gm
    loss = np.clip(loss, -0.3, 0.6)
    lost = gm * loss
    gm = gm - lost
    csf = csf + lost  # atrophy: tissue replaced by CSF
    chi = CHI["gm"] * gm + CHI["wm"] * wm + CHI["csf"] * csf
    for nucleus in NUCLEI:
        for side in ("L", "R"):
            m = template.region(f"{nucleus}_{side}").astype(np.float32)
            m = ndimage.gaussian_filter(m, 1.0 / template.grid.voxel_size)
            iron = CHI[nucleus] + spec.iron_gain_per_year * age_dev * (CHI[nucleus] / 0.1)
            chi = chi * (1 - m) + iron * m * (gm + wm + csf)
    for e in spec.effects:
        chi = chi + e.chi_ppm * sev_factor[e.name]["chi"] * effects[e.name]
    tex_sigma = 2.0 / template.grid.voxel_size
    tex = ndimage.gaussian_filter(rng.standard_normal(gm.shape).astype(np.float32), tex_sigma)
    tex *= spec.texture_ppm / max(float(tex.std()), 1e-12)
    tissue = np.clip(gm + wm + csf, 0, 1)
    chi = chi + tex * (gm + wm)
    brain_chi = (chi * tissue).astype(np.float32)
    skull, scalp, rim, sinus = _head_layers(template)
    head_chi = CHI["skull"] * skull + CHI["scalp"] * scalp + CHI["csf"] * rim
    head = (tissue > 0.05) | (skull + scalp + rim > 0)
    air = (~head).astype(np.float32)
    head_chi = head_chi * (1 - sinus) + CHI["air"] * sinus
    # Air outside the head is added on each subject's own grid (it continues
    # beyond the template box), so it is not part of this map.
    full_chi = np.where(tissue > 0, brain_chi + (1 - tissue) * head_chi, head_chi)
    return {
        "gm": gm.astype(np.float32), "wm": wm.astype(np.float32), "csf": csf.astype(np.float32),
        "chi_brain": brain_chi, "chi_full": full_chi.astype(np.float32),
        "skull": skull * (1 - sinus), "scalp": scalp, "rim": rim, "sinus": sinus, "air": air,
        "atrophy": np.clip(atrophy, -0.5, 0.5),
        **{f"effect_{k}": v for k, v in effects.items()},
    }


#: Lattice spacing (mm) of the atrophy displacement: planted effects are
#: smoothed by several mm, and a finer FFT solve would cost a gigabyte at 1 mm.
ATROPHY_STEP_MM = 2.0


def _place_volume_change(place: Placement, atrophy: np.ndarray, template: Template, rng,
                         spec: SimulationSpec) -> Placement:
    """The placement with the planted atrophy and the subject's own regional volume differences.

    Both are local volume losses (negative: gains), so one Poisson solve
    (:func:`atrophy_displacement`) on a lattice of ``ATROPHY_STEP_MM`` gives
    their displacement.  The regional differences are smoothed white noise
    with SD ``spec.volume_sd``.
    """
    vs = template.grid.voxel_size
    k = max(1, int(round(ATROPHY_STEP_MM / vs)))
    aff = template.grid.affine.copy()
    aff[:3, :3] *= k
    loss = atrophy[::k, ::k, ::k].astype(np.float64)
    noise = rng.standard_normal(loss.shape)  # drawn whatever volume_sd, so later draws do not depend on it
    if spec.volume_sd > 0:
        natural = ndimage.gaussian_filter(noise, spec.volume_smooth_mm / 2.3548 / (k * vs), mode="wrap")
        loss = loss + natural * (spec.volume_sd / max(float(natural.std()), 1e-12))
    if not np.any(loss):
        return place
    u, _ = atrophy_displacement(np.clip(loss, -0.6, 0.6), aff)
    return replace(place, atrophy_grid_affine=aff, atrophy=u)


def _field_jacobian_det(field: np.ndarray, grid_affine: np.ndarray, points: np.ndarray) -> np.ndarray:
    """det(I + grad u) of a (3, ...) lattice displacement ``u`` at world points (3, n)."""
    step = float(voxel_sizes(np.asarray(grid_affine, dtype=float))[0])
    # row a of grad u is the gradient of component a, sampled like any (3, ...) field
    rows = [_sample_field(np.stack(np.gradient(field[a].astype(np.float64), step)), grid_affine, points, order=1)
            for a in range(3)]
    return np.linalg.det(np.stack(rows, axis=1).transpose(2, 0, 1) + np.eye(3))


def volume_fraction(place: Placement, template: Template, iterations: int = 6) -> np.ndarray:
    """Native volume per MNI volume at every template voxel: what Jacobian modulation measures.

    The subject → MNI map is ``atrophy ∘ warp ∘ affine``; a template voxel
    holds ``1 / |det D|`` of the subject's tissue, with ``D`` taken at the
    voxel's pre-image.  Head size (the affine), the random anatomical warp
    and the planted atrophy all change it: VBM with Jacobian modulation sees
    all three, so the truth must too.  Pre-images are found by fixed-point
    iteration (:meth:`Placement.mni_preimages`).
    """
    x = _world_coords(template.grid.shape, template.grid.affine).reshape(3, -1).astype(np.float64)
    det = np.full(x.shape[1], abs(np.linalg.det(place.affine[:3, :3])))
    after_warp, after_affine = place.mni_preimages(x, iterations)
    if place.atrophy is not None:
        det *= _field_jacobian_det(place.atrophy, place.atrophy_grid_affine, after_warp)
    det *= _field_jacobian_det(place.disp, place.disp_grid_affine, after_affine)
    return (1.0 / np.clip(det, 1e-3, None)).reshape(template.grid.shape).astype(np.float32)
