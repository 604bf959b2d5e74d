"""The affine to the template: a searched start, the brain-to-brain affine and its fit."""

from __future__ import annotations

import os

import numpy as np
from scipy import ndimage

from .antsbridge import (
    LPS,
    to_ants,
)
from .modulation import _t1_similarity
from .params import AnatParams

__all__ = ["MIN_AFFINE_FIT"]

#: nor is one whose T1, after its affine to the template, correlates less than this with the template T1 in
#: the template's brain (a head's brain reaches about 0.6-0.8 after the affine; noise or a neck about 0)
MIN_AFFINE_FIT = 0.4


def _searched_start(brain, mni_t1, params: AnatParams, path: str) -> str:
    """The best of many starts of the brain-to-template affine, by mutual information (antsAffineInitializer).

    Both brains are resampled to ``params.search_voxel_mm``: the search only has
    to land in the right basin, which the full affine then refines.  Rotations
    up to ``search_degrees`` about each axis in ``search_step_degrees`` steps,
    each followed by a short local affine optimisation; the centres of mass are
    aligned first.
    """
    import ants

    spacing = (params.search_voxel_mm,) * 3
    fixed = ants.resample_image(mni_t1, spacing, use_voxels=False, interp_type=0)
    moving = ants.resample_image(brain, spacing, use_voxels=False, interp_type=0)
    return ants.affine_initializer(fixed, moving, search_factor=params.search_step_degrees,
                                   radian_fraction=params.search_degrees / 180.0, use_principal_axis=False,
                                   local_search_iterations=10, txfn=path)


def _affine_fit(brain, mni_t1, affine_files: list, template_brain: np.ndarray) -> float:
    """Correlation of the brain, moved by its affine, with the template T1 inside the template's brain."""
    import ants

    moved = ants.apply_transforms(mni_t1, brain, affine_files, interpolator="linear").numpy()
    return _t1_similarity(moved, mni_t1.numpy(), template_brain)


def _brain_affine(brain, mni_t1, mni_mask, start: str, params: AnatParams, tmp: str) -> list:
    """The affine of the extracted brain to the template's brain from ``start`` (its transform files)."""
    import ants

    aff = ants.registration(fixed=mni_t1, moving=brain, type_of_transform="Affine", mask=mni_mask,
                            initial_transform=[start], outprefix=os.path.join(tmp, "aff_"), random_seed=params.seed)
    return aff["fwdtransforms"]


def _centre_transform(centre_mm: np.ndarray, template, path: str) -> str:
    """An ITK translation file that maps the template's brain centre onto ``centre_mm``."""
    import ants

    grid = template.grid
    ijk = np.argwhere(template.brain_mask).mean(axis=0)
    mni_centre = grid.affine[:3, :3] @ ijk + grid.affine[:3, 3]
    shift_lps = LPS @ (np.asarray(centre_mm, float) - mni_centre)  # fixed (MNI) point -> moving (subject) point
    tx = ants.create_ants_transform(transform_type="AffineTransform", dimension=3, translation=tuple(shift_lps))
    ants.write_transform(tx, path)
    return path


def _check_target_shapes(targets: dict, grid) -> None:
    for name, image in targets.items():
        if np.shape(image) != grid.shape:
            raise ValueError(f"normalisation target {name!r} has shape {np.shape(image)}, "
                             f"the template grid {grid.shape}")


def _metric_mask(template):
    """Where the registration metric counts: the MNI brain, dilated by two voxels (the templates are brain only)."""
    return to_ants(ndimage.binary_dilation(template.brain_mask, iterations=2).astype(np.float32), template.grid.affine)


def _read_affine(path: str) -> dict:
    import ants

    tx = ants.read_transform(path)
    return {"parameters": [float(v) for v in tx.parameters],
            "fixed_parameters": [float(v) for v in tx.fixed_parameters]}
