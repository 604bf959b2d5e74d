"""The anatomy chain: every step of one subject, in order, and its retry from the other start."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import replace

import numpy as np
from nibabel.affines import voxel_sizes

from ..timing import StepClock
from .antsbridge import (
    atropos,
    deterministic,
    from_ants,
    points_map,
    scratch_dir,
    to_ants,
)
from .brain import _brain_only, _extracted_brain, _rough_brain_mask, _template_stripped, _world_top
from .coregistration import _coregister_gre
from .modulation import _t1_similarity, _to_mni
from .params import AnatParams, AnatResult
from .preparation import _back_to_t1_grid, _prepare_t1
from .registration import (
    MIN_AFFINE_FIT,
    _affine_fit,
    _brain_affine,
    _centre_transform,
    _check_target_shapes,
    _metric_mask,
    _read_affine,
    _searched_start,
)
from .segmentation import _bias_corrected, _priors_on_subject
from .tissue import _tissue_syn

__all__ = ["TEMPLATE_EXTRACTION", "process_anatomy", "process_anatomy_checked"]

TEMPLATE_EXTRACTION = "template brain mask through an affine"


def process_anatomy(t1: np.ndarray, t1_affine: np.ndarray, gre_mag: np.ndarray, gre_affine: np.ndarray,
                    template, params: AnatParams = AnatParams(), targets: dict | None = None) -> AnatResult:
    """Segment and normalise one subject, and coregister its GRE to its T1.

    Steps: field of view cut below the brain (and very fine images resampled),
    N4, a rough brain mask near the head's brain centre, an affine to the
    template started at that centre, the template's brain mask back to the
    subject (skull strip), SyN, prior-guided Atropos, the tissue SyN, rigid
    GRE → T1, and one resampling of the tissue maps to MNI.  Native maps are
    returned on the grid of ``t1`` whatever was cut or resampled; the point
    map (:attr:`AnatResult.t1_points`) and ``gre_to_t1`` carry χ to MNI later
    (:func:`chi_to_mni`).

    Parameters
    ----------
    t1, t1_affine : T1w image and its RAS affine.
    gre_mag, gre_affine : first-echo GRE magnitude and its affine.
    template : cohort.templates.Template
        MNI grid, T1 template and tissue priors.
    params : AnatParams
    targets : dict, optional
        Images on the template grid to normalise to instead of the
        template's own: ``"t1"`` for the affine and the T1 normalisation,
        ``"gm"`` and ``"wm"`` for the tissue normalisation (a study
        template).  Segmentation priors and QC stay the template's.
    """

    t1 = np.asarray(t1, dtype=np.float32)
    if t1.ndim != 3 or not np.isfinite(t1).all() or t1.max() <= 0:
        raise ValueError("T1w image must be a 3-D, finite, non-empty array")
    grid = template.grid
    targets = _targets(template, targets)
    clock = StepClock()
    lap = clock.lap

    work, work_affine, box, preparation = _prepare_t1(t1, np.asarray(t1_affine, float), params)
    work_voxel = tuple(float(v) for v in voxel_sizes(work_affine))
    lap("field of view")
    extracted = None
    if params.skull_strip and params.brain_extraction == "deepbet":
        extracted, preparation["brain_extraction"] = _extracted_brain(t1[box.slices], box.affine, work.shape,
                                                                      work_affine)
        lap("brain extraction")
    if params.skull_strip and extracted is None:
        preparation.setdefault("brain_extraction", {})["method"] = TEMPLATE_EXTRACTION
    with deterministic(params.seed), scratch_dir() as tmp:
        t1_img = to_ants(work, work_affine)
        n4 = _bias_corrected(t1_img, params, tmp)
        lap("n4")
        mni_t1 = to_ants(np.asarray(targets["t1"], np.float32), grid.affine)
        # The template is brain only, so the mask restricts every metric to the MNI brain.
        mni_mask = _metric_mask(template)
        centre = _centre_transform(box.centre_mm, template, os.path.join(tmp, "centre.mat"))
        moving, initial = n4, [centre]
        if params.skull_strip:
            moving, initial, extracted = _stripped_and_placed(n4, extracted, centre, box, mni_t1, mni_mask, template,
                                                              params, tmp, preparation)
            lap("affine + skull strip")
        reg = _syn_to_template(moving, mni_t1, mni_mask, initial, params, tmp)
        lap("normalisation (SyN)")
        post, brain_prob, mask_img = _segmented(n4, template, reg["invtransforms"], extracted, params, tmp)
        lap("segmentation (Atropos)")
        affine_file = initial[0] if params.skull_strip else reg["fwdtransforms"][-1]
        if params.normalise_on == "tissue":
            tissue_img = [n4.new_image_like(np.asarray(p, np.float32)) for p in post]  # CSF, GM, WM
            reg = _tissue_syn(tissue_img[1], tissue_img[2], targets, grid, mni_mask, [affine_file], params, tmp)
            lap("normalisation on tissue (SyN)")
        affine_itk = _read_affine(affine_file)
        gre_to_t1 = _coregister_gre(n4, gre_mag, gre_affine, params, tmp)
        lap("coregistration (rigid)")
        # Point map MNI voxel -> T1 world, then everything sampled once.
        pts_t1 = points_map(grid.shape, grid.affine, reg["fwdtransforms"], n4)
        n4_arr, brain, icv = n4.numpy(), mask_img.numpy() > 0, np.clip(brain_prob.numpy(), 0.0, 1.0)
    native, mni, measures = _outputs(post, icv, brain, n4_arr, from_ants(t1_img)[1], work_voxel, pts_t1, template,
                                     params, box, t1.shape, np.asarray(t1_affine, float))
    lap("resampling, modulation, smoothing")
    return AnatResult(gm=native["gm"], wm=native["wm"], csf=native["csf"], brain_mask=native["brain_mask"] > 0.5,
                      gre_to_t1=gre_to_t1, t1_points=pts_t1, seconds=clock.steps, affine_itk=affine_itk,
                      qc_t1_corr=_t1_similarity(mni["t1_mni"], targets["t1"], template.brain_mask),
                      preparation=preparation, **measures, **mni)


def _syn_to_template(moving, mni_t1, mni_mask, initial: list, params: AnatParams, tmp: str) -> dict:
    """SyN of the (stripped) T1 to the template T1 from the affine ``initial``, within the template's brain."""
    import ants

    return ants.registration(fixed=mni_t1, moving=moving, type_of_transform="SyNOnly" if params.skull_strip else "SyN",
                             mask=mni_mask, initial_transform=initial, syn_metric=params.syn_metric,
                             syn_sampling=params.syn_sampling, reg_iterations=tuple(params.syn_iterations),
                             outprefix=os.path.join(tmp, "norm_"), random_seed=params.seed)


def _segmented(n4, template, invtransforms: list, extracted, params: AnatParams, tmp: str):
    """Atropos with the template's priors carried to the subject: ``(CSF, GM, WM posteriors, ICV, brain image)``.

    The brain is the network's where it found one, else the template's carried back.
    """
    priors, brain_prob, mask_img = _priors_on_subject(n4, template, invtransforms)
    if extracted is not None:  # the subject's own brain, not the template's carried back
        mask_img = n4.new_image_like(extracted.astype(np.float32))
    post = [p.numpy() for p in atropos(n4, mask_img, priors, tmp, mrf=params.seg_mrf, iterations=params.seg_iterations,
                                        prior_weight=params.seg_prior_weight)]
    return post, brain_prob, mask_img


def _outputs(post, icv, brain, n4_arr, t1_aff_ants, work_voxel, pts_t1, template, params: AnatParams, box, t1_shape,
             t1_affine) -> tuple[dict, dict, dict]:
    """Native maps on the T1's own grid, the MNI maps (one resampling), and the volumes and TIV."""
    csf, gm, wm = post
    vox_ml = float(np.prod(work_voxel)) / 1000.0
    # TIV as the soft intracranial mask of the template brought back to the
    # subject (the "reverse-normalised ICV mask" of Keihaninejad et al.
    # 2010): partial voxels at the skull count by their fraction, and
    # atrophy (GM turning into CSF) does not change it.
    measures = {"tiv_ml": float(icv.sum() * vox_ml),
                **{f"{name}_ml": float(np.sum(m) * vox_ml) for name, m in (("gm", gm), ("wm", wm), ("csf", csf))},
                "qc_brain_top_gap_mm": box.top_mm - _world_top(brain, t1_aff_ants)}
    n4_brain = n4_arr * brain
    t1_norm = n4_brain / max(float(n4_brain[brain].mean()), 1e-12)
    mni = _to_mni(pts_t1, t1_aff_ants, gm, wm, template, params, t1=t1_norm)
    native = _back_to_t1_grid({"gm": gm, "wm": wm, "csf": csf, "brain_mask": brain.astype(np.float32)},
                              t1_aff_ants, box, t1_shape, t1_affine)
    return native, mni, measures


def _targets(template, targets: dict | None) -> dict:
    """The images normalised to: the template's T1, GM and WM, or those of ``targets`` (a study template)."""
    unknown = set(targets or {}) - {"t1", "gm", "wm"}
    if unknown:
        raise ValueError(f"unknown normalisation targets {sorted(unknown)}; use 't1', 'gm' and 'wm'")
    targets = {"t1": template.t1, "gm": template.gm, "wm": template.wm, **(targets or {})}
    _check_target_shapes(targets, template.grid)
    return targets


def _stripped_and_placed(n4, extracted, centre: str, box, mni_t1, mni_mask, template, params: AnatParams, tmp: str,
                         preparation: dict):
    """The brain alone and its affine to the template: ``(moving, initial transforms, extracted mask or None)``.

    The network's brain (or a rough one near the brain centre) starts the affine from
    the searched rotation or the centre; where the network's brain, so placed, does not
    look like the template's, the rough mask takes its place.  Without the network's
    mask, the template's brain mask carried back through the affine strips the T1.
    """
    def rough():
        return _rough_brain_mask(n4.numpy(), n4, box.centre_mm, params)

    moving = _brain_only(n4, extracted if extracted is not None else rough())
    start = centre
    if params.affine_start == "search":
        start = _searched_start(moving, mni_t1, params, os.path.join(tmp, "search.mat"))
    initial = _brain_affine(moving, mni_t1, mni_mask, start, params, tmp)
    fit = _affine_fit(moving, mni_t1, initial, template.brain_mask)
    preparation["brain_extraction"]["affine_t1_correlation"] = round(fit, 3)
    if extracted is not None and fit < MIN_AFFINE_FIT:
        # what the network found does not look like the template's brain: not a brain, or not all of it
        preparation["brain_extraction"]["fallback"] = (
            f"the network's brain, placed by its affine, correlates {fit:.2f} < {MIN_AFFINE_FIT} with the "
            f"template T1: the template's brain mask was used")
        preparation["brain_extraction"]["method"] = TEMPLATE_EXTRACTION
        extracted = None
        moving = _brain_only(n4, rough())
        initial = _brain_affine(moving, mni_t1, mni_mask, start, params, tmp)
    if extracted is None:  # the template's brain mask, back through the affine, strips the T1
        moving = _template_stripped(n4, mni_mask, initial)
    preparation["affine_start"] = params.affine_start
    return moving, initial, extracted


def process_anatomy_checked(t1: np.ndarray, t1_affine: np.ndarray, gre_mag: np.ndarray, gre_affine: np.ndarray,
                            template, params: AnatParams = AnatParams(), targets: dict | None = None,
                            failures: Callable[[AnatResult], list[str]] | None = None) -> AnatResult:
    """:func:`process_anatomy`, tried once more from the other affine start when its result fails ``failures``.

    A registration that starts in the wrong basin ends there; QC catches it,
    but the subject would be lost.  The second attempt starts the affine the
    other way (:attr:`AnatParams.affine_start`); the attempt with fewer QC
    failures is kept (the first on a tie), and both are recorded in
    ``preparation["attempts"]`` so the report can say what happened.

    Parameters
    ----------
    failures : callable, optional
        The QC failures of a result in words (empty: it passes); without it,
        this is :func:`process_anatomy`.
    """
    first = process_anatomy(t1, t1_affine, gre_mag, gre_affine, template, params, targets)
    problems = failures(first) if failures is not None else []
    if not problems or not params.skull_strip:
        return first
    retry = replace(params, affine_start="centre" if params.affine_start == "search" else "search")
    second = process_anatomy(t1, t1_affine, gre_mag, gre_affine, template, retry, targets)
    again = failures(second)
    kept = second if len(again) < len(problems) else first
    kept.preparation["attempts"] = [
        {"affine_start": params.affine_start, "qc_failures": problems, "kept": kept is first},
        {"affine_start": retry.affine_start, "qc_failures": again, "kept": kept is second}]
    other = first if kept is second else second
    kept.seconds = {**kept.seconds, "the other attempt": float(sum(other.seconds.values()))}
    return kept
