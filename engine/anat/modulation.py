"""Tissue maps to MNI: one resampling, Jacobian modulation, smoothing and the normalisation QC."""

from __future__ import annotations

import numpy as np

from .params import AnatParams
from .resampling import jacobian_determinant, sample_at, smooth_fwhm

__all__ = []

def _to_mni(pts_t1, t1_aff, gm, wm, template, params: AnatParams, t1=None) -> dict:
    """GM, WM (and the T1, if given) sampled once through the point map; modulation, smoothing, QC."""
    grid = template.grid
    vs = (grid.voxel_size,) * 3
    jac = jacobian_determinant(pts_t1, vs)
    gm_mni = np.nan_to_num(sample_at(gm, t1_aff, pts_t1, order=1, cval=0.0))
    wm_mni = np.nan_to_num(sample_at(wm, t1_aff, pts_t1, order=1, cval=0.0))
    t1_mni = None if t1 is None else np.nan_to_num(sample_at(t1, t1_aff, pts_t1, order=1, cval=0.0)).astype(np.float32)
    jac_safe = np.nan_to_num(jac, nan=0.0)
    gm_mod = gm_mni * jac_safe
    gm_mod_s = smooth_fwhm(gm_mod, params.vbm_fwhm_mm, vs)
    tgm = template.gm
    sel = template.brain_mask
    corr = float(np.corrcoef(gm_mni[sel], tgm[sel])[0, 1])
    a, b = gm_mni > 0.5, tgm > 0.5
    dice = float(2 * (a & b).sum() / max(a.sum() + b.sum(), 1))
    return {"gm_mni": gm_mni.astype(np.float32),
            "wm_mni": wm_mni.astype(np.float32), "gm_mod": gm_mod.astype(np.float32),
            "gm_mod_smooth": gm_mod_s.astype(np.float32), "jacobian": jac.astype(np.float32),
            "qc_gm_corr": corr, "qc_dice": dice, "t1_mni": t1_mni}


def _t1_similarity(t1_mni: np.ndarray | None, target: np.ndarray, brain: np.ndarray) -> float:
    """Correlation of the warped T1 with the template T1 inside the template brain."""
    if t1_mni is None:
        return float("nan")
    a, b = np.asarray(t1_mni, float)[brain], np.asarray(target, float)[brain]
    if a.std() == 0 or b.std() == 0:
        return 0.0
    return float(np.corrcoef(a, b)[0, 1])
