"""Anatomy: bias correction, brain extraction, tissue segmentation, TIV, GRE → T1
coregistration, diffeomorphic normalisation to MNI and VBM.

ANTs (antspyx) does the registrations and the N4 and Atropos steps; every
resampling into MNI space is done here from point maps.  The anatomy runs
before QSM: its brain mask, carried to the GRE grid by the coregistration,
bounds the QSM mask, and χ then goes from the GRE grid to MNI through
coregistration ∘ normalisation (the stored point map) with one interpolation
only (:func:`chi_to_mni`).

One module per step, joined by :mod:`.chain`: :mod:`.preparation` (the T1's
field of view and working grid), :mod:`.extraction` and :mod:`.brain` (the
brain), :mod:`.segmentation` (N4, priors), :mod:`.registration` (the affine),
:mod:`.tissue` (the tissue SyN and the study template's second pass),
:mod:`.coregistration` (GRE → T1), :mod:`.modulation` (MNI maps, VBM, QC),
:mod:`.resampling` (point maps) and :mod:`.labels` (MNI labels on a native
grid).  The names below are the package's public API.
"""

from .chain import TEMPLATE_EXTRACTION, process_anatomy, process_anatomy_checked
from .params import AnatParams, AnatResult
from .resampling import chi_to_mni, jacobian_determinant, sample_at, smooth_fwhm, t1_brain_on_gre, t1_map_on_gre
from .segmentation import bias_correct
from .tissue import renormalise_on_tissue

__all__ = ["AnatParams", "AnatResult", "process_anatomy", "process_anatomy_checked", "renormalise_on_tissue",
           "bias_correct", "sample_at", "t1_brain_on_gre", "t1_map_on_gre", "chi_to_mni", "jacobian_determinant",
           "smooth_fwhm", "TEMPLATE_EXTRACTION"]
