"""Normalisation of the tissue maps (GM, WM) to the template's, and the study template's second pass."""

from __future__ import annotations

import os
import time

import numpy as np

from .antsbridge import (
    deterministic,
    from_ants,
    points_map,
    scratch_dir,
    to_ants,
)
from .modulation import _to_mni
from .params import AnatParams
from .preparation import _resample_isotropic
from .registration import _check_target_shapes, _metric_mask

__all__ = ["renormalise_on_tissue"]

def renormalise_on_tissue(gm: np.ndarray, wm: np.ndarray, t1_affine: np.ndarray, affine_itk: dict,
                          template, targets: dict, params: AnatParams = AnatParams(),
                          preparation: dict | None = None) -> dict:
    """The tissue normalisation of a segmented subject again, to new GM and WM targets.

    A study template's second pass (DARTEL registers every subject to the
    cohort's mean again) needs nothing of :func:`process_anatomy` but its
    last registration: the native posteriors, the affine and the GRE → T1
    coregistration of the first pass stay valid, so only the tissue SyN runs,
    from the same affine, to ``targets["gm"]`` and ``targets["wm"]``.

    Parameters
    ----------
    gm, wm : native GM and WM posteriors of the first pass (T1w grid).
    t1_affine : their RAS affine.
    affine_itk : :attr:`AnatResult.affine_itk` of the first pass.
    template : cohort.templates.Template (grid, brain mask, QC reference).
    targets : dict with ``"gm"`` and ``"wm"`` on the template grid.
    params : AnatParams
    preparation : dict, optional
        :attr:`AnatResult.preparation` of the first pass: the posteriors are cut
        and resampled as the first pass's T1 was, so that the registration sees
        the same images.

    Returns
    -------
    dict
        The MNI-space fields of :class:`AnatResult` (``gm_mni``,
        ``wm_mni``, ``gm_mod``, ``gm_mod_smooth``, ``jacobian``, ``qc_gm_corr``,
        ``qc_dice``, ``t1_mni`` = None) and ``t1_points``, ``seconds``.
    """
    gm = np.asarray(gm, np.float32)
    wm = np.asarray(wm, np.float32)
    if gm.ndim != 3 or gm.shape != wm.shape:
        raise ValueError(f"GM and WM posteriors must be 3-D arrays of one shape, got {gm.shape} and {wm.shape}")
    if not {"parameters", "fixed_parameters"} <= set(affine_itk or {}):
        raise ValueError("affine_itk must hold the first pass's 'parameters' and 'fixed_parameters'")
    grid = template.grid
    missing = {"gm", "wm"} - set(targets or {})
    if missing:
        raise ValueError(f"renormalisation needs targets {sorted(missing)}")
    _check_target_shapes(targets, grid)
    t0 = time.perf_counter()
    with deterministic(params.seed), scratch_dir() as tmp:
        import ants

        affine_file = os.path.join(tmp, "affine.mat")
        tx = ants.create_ants_transform(transform_type="AffineTransform", dimension=3,
                                        parameters=np.asarray(affine_itk["parameters"], float),
                                        fixed_parameters=np.asarray(affine_itk["fixed_parameters"], float))
        ants.write_transform(tx, affine_file)
        (gm_w, wm_w), work_affine = _as_prepared((gm, wm), np.asarray(t1_affine, float), preparation)
        gm_img, wm_img = to_ants(gm_w, work_affine), to_ants(wm_w, work_affine)
        mni_mask = _metric_mask(template)
        reg = _tissue_syn(gm_img, wm_img, targets, grid, mni_mask, [affine_file], params, tmp)
        pts_t1 = points_map(grid.shape, grid.affine, reg["fwdtransforms"], gm_img)
    _, t1_aff_ants = from_ants(gm_img)
    mni = _to_mni(pts_t1, t1_aff_ants, gm_w, wm_w, template, params)
    return {**mni, "t1_points": pts_t1, "seconds": {"normalisation on tissue (SyN)": time.perf_counter() - t0}}


def _as_prepared(maps, affine: np.ndarray, preparation: dict | None):
    """Maps on the T1 grid cut and resampled as :func:`_prepare_t1` prepared the T1 (see its record)."""
    if not preparation or not preparation.get("crop_voxels"):
        return maps, affine
    lo = np.array([a for a, _ in preparation["crop_voxels"]])
    slices = tuple(slice(int(a), int(b)) for a, b in preparation["crop_voxels"])
    crop_affine = affine.copy()
    crop_affine[:3, 3] = affine[:3, :3] @ lo + affine[:3, 3]
    out = [np.asarray(m)[slices] for m in maps]
    if preparation.get("working_voxel_mm"):
        resampled = [_resample_isotropic(m, crop_affine, float(preparation["working_voxel_mm"])) for m in out]
        return [m for m, _ in resampled], resampled[0][1]
    return out, crop_affine


def _tissue_syn(gm_img, wm_img, targets, grid, mni_mask, initial: list, params: AnatParams, tmp: str):
    """SyN of the subject's GM and WM posteriors to the GM and WM targets, from ``initial``."""
    import ants

    return ants.registration(fixed=to_ants(np.asarray(targets["gm"], np.float32), grid.affine),
                             moving=gm_img, type_of_transform="SyNOnly", mask=mni_mask,
                             initial_transform=initial, syn_metric=params.tissue_metric,
                             syn_sampling=params.tissue_sampling,
                             multivariate_extras=[(params.tissue_metric,
                                                   to_ants(np.asarray(targets["wm"], np.float32), grid.affine),
                                                   wm_img, 1, params.tissue_sampling)],
                             reg_iterations=tuple(params.tissue_iterations),
                             outprefix=os.path.join(tmp, "tissue_"), random_seed=params.seed)
