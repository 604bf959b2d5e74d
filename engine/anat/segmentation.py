"""N4 bias correction and the MNI tissue priors that guide Atropos on the subject."""

from __future__ import annotations

import os

from .antsbridge import (
    to_ants,
)
from .params import AnatParams

__all__ = ["bias_correct"]

def bias_correct(t1_img, params: AnatParams = AnatParams()):
    """N4 bias-field correction of an ANTsImage with ``params.n4_levels`` fitting levels."""
    import ants

    if params.n4_levels < 1:
        raise ValueError(f"n4_levels must be >= 1, got {params.n4_levels}")
    return ants.n4_bias_field_correction(t1_img, shrink_factor=params.n4_shrink,
                                         convergence={"iters": [50] * params.n4_levels, "tol": 1e-7})


def _bias_corrected(t1_img, params: AnatParams, tmp: str):
    """N4 of the working T1, read back from NIfTI.

    Atropos re-reads its priors from NIfTI files, whose header stores the
    orientation in single precision; the T1 goes through the same precision so
    that ITK sees one physical space.
    """
    import ants

    n4_file = os.path.join(tmp, "t1_n4.nii")  # uncompressed: a scratch file
    ants.image_write(bias_correct(t1_img, params), n4_file)
    return ants.image_read(n4_file)


def _priors_on_subject(n4, template, invtransforms: list):
    """The template's CSF, GM and WM priors on the subject's T1 grid, their sum, and the brain mask it gives."""
    import ants

    priors = []
    for prior in (template.csf, template.gm, template.wm):
        p = ants.apply_transforms(n4, to_ants(prior, template.grid.affine), invtransforms,
                                  interpolator="linear", whichtoinvert=[True, False])
        priors.append(ants.copy_image_info(n4, p))
    brain_prob = priors[0] + priors[1] + priors[2]
    mask_img = ants.copy_image_info(n4, ants.threshold_image(brain_prob, 0.3, 1e9).iMath("FillHoles"))
    return priors, brain_prob, mask_img
