"""Rigid registration of the first-echo GRE magnitude to the T1."""

from __future__ import annotations

import os

import numpy as np
from nibabel.affines import voxel_sizes

from .antsbridge import (
    from_ants,
    itk_matrix_to_ras,
    to_ants,
)
from .params import AnatParams
from .preparation import _resample_isotropic

__all__ = []

def _coregister_gre(n4, gre_mag: np.ndarray, gre_affine: np.ndarray, params: AnatParams, tmp: str) -> np.ndarray:
    """Rigid GRE -> T1 by mutual information: the 4x4 RAS matrix mapping T1 points to GRE points."""
    import ants

    gre_img = to_ants(np.asarray(gre_mag, dtype=np.float32), gre_affine)
    fixed = n4
    t1, t1_affine = from_ants(n4)
    if params.coreg_voxel_mm is not None and float(voxel_sizes(t1_affine).min()) < params.coreg_voxel_mm:
        fixed = to_ants(*_resample_isotropic(t1, t1_affine, params.coreg_voxel_mm))
    rig = ants.registration(fixed=fixed, moving=gre_img, type_of_transform="Rigid", aff_metric="mattes",
                            outprefix=os.path.join(tmp, "coreg_"), random_seed=params.seed)
    return itk_matrix_to_ras(rig["fwdtransforms"][0])
