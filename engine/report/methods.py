"""The report's methods paragraphs, written from the spec and from what the run recorded.

A researcher pastes this text into a paper, so it must describe what ran: the
parameters recorded with the stores' nodes (not the defaults of today's
code), the study spec the group level used, and what the QSM chain decided
for each subject (which axes it filtered against ringing, the regularisation
weight the noise scaling gave, the reference region).  The words live in the
Jinja template ``templates/methods.txt.j2``; this module only gathers the
facts and the phrases that depend on a choice.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from ..anat import AnatParams
from ..qsm.chain import QSMParams
from ..spec import StudySpec

__all__ = ["methods_text", "methods_context"]

_COMBINE = {"phase-difference": "complex differences of successive echoes, refined with every echo",
            "laplacian-wls": "a weighted least-squares fit of the frequency after unwrapping each echo",
            "laplacian-te": "a TE-weighted combination of the unwrapped echoes",
            "path-wls": "a weighted least-squares fit after unwrapping each echo",
            "nonlinear": "a nonlinear fit of the complex signal"}
_UNWRAP = {"path": "exact path-following spatial unwrapping", "laplacian": "Laplacian spatial unwrapping"}
_REFERENCE = {"brain": "the mean over the whole QSM mask",
              "csf": "the mean of the CSF of the lateral ventricles (the subject's CSF with probability above 0.9 "
                     "inside the template's lateral ventricles carried to the subject)",
              "wm": "the mean of the white matter (the subject's WM with probability above 0.9, eroded by one "
                    "voxel)"}
_AXES = ("first", "second", "third")


def _num(value) -> str:
    """A number as a methods text writes it: no trailing zeros, lists as lists."""
    if isinstance(value, (list, tuple)):
        return ", ".join(_num(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _extraction_words(a: dict) -> str:
    """How the brain was found and where its affine to the template started, for the methods."""
    if not a.get("skull_strip", True):
        return "the whole head was registered to the template"
    found = ("the brain was extracted with deepbet's networks (Fisch et al. 2024; the template's brain mask through "
             "an affine where the network's mask was not a plausible brain)"
             if a.get("brain_extraction", "template") == "deepbet"
             else "the brain was extracted with the template's brain mask carried back through an affine")
    start = (f"the brain's affine to the template started from the best of rotations up to "
             f"±{a.get('search_degrees', '?'):g}° by mutual information" if a.get("affine_start") == "search"
             else "the brain's affine to the template started at the estimated brain centre")
    return f"{found}; {start} (a subject failing QC was registered once more from the other start)"


def _ringing_words(q: dict, chains: list[dict]) -> str:
    choice = q["ringing"]
    window = f"a Tukey window over the outer {100 * q['kspace_taper']:g} % of k-space"
    if choice == "none":
        return "No filter against truncation (Gibbs) ringing was applied."
    if choice == "unring":
        return ("Truncation (Gibbs) ringing was removed from the complex signal of every echo by local sub-voxel "
                "shifts along each axis (Kellner et al. 2016).")
    if choice == "taper":
        return f"The complex signal of every echo was filtered along every axis with {window}."
    axes = Counter(tuple(c.get("tapered_axes", [])) for c in chains)
    filtered = sum(n for k, n in axes.items() if k)
    found = "; ".join(f"{n} along the {' and '.join(_AXES[a] for a in k)} image "
                      f"ax{'es' if len(k) > 1 else 'is'}" for k, n in sorted(axes.items()) if k)
    tally = (f" ({filtered} of {len(chains)} subjects: {found})" if filtered
             else f" (none of the {len(chains)} subjects showed it)") if chains else ""
    return ("Truncation (Gibbs) ringing was looked for along each image axis of the first echo (local sub-voxel "
            "shifts that lower the signal's oscillation next to strong edges more than elsewhere); where found, the "
            f"complex signal of every echo was filtered along that axis only with {window}, and images without it "
            f"were left unfiltered{tally}.")


def _inversion_words(q: dict, chains: list[dict]) -> str:
    method = q["inversion"]
    if method == "tkd":
        return f"truncated k-space division (threshold {_num(q['tkd_threshold'])})"
    if method == "ilsqr":
        return f"iLSQR (stopping at a relative residual of {_num(q['ilsqr_tol'])})"
    scaled = q.get("reference_noise_ppm") is not None
    if method == "tv":
        effective = [c["tv_lambda_effective"] for c in chains if "tv_lambda_effective" in c]
        base = (f"total-variation regularised inversion (over-relaxed ADMM, {q['tv_iterations']} iterations, "
                f"λ = {_num(q['tv_lambda'])}")
    else:
        effective = [c["star_lambdas_effective"][0] for c in chains if "star_lambdas_effective" in c]
        base = (f"STAR-QSM two-level sparse inversion ({q['tv_iterations']} iterations, λ = "
                f"{_num(q['star_lambda_large'])} then {_num(q['star_lambda_small'])}")
    if not scaled:
        return base + ", fixed)"
    words = (f"{base}, multiplied by (σ / {_num(q['reference_noise_ppm'])} ppm)² where the local field's robust "
             f"noise σ exceeded {_num(q['reference_noise_ppm'])} ppm")
    if effective:
        which = "the weight" if method == "tv" else "the first weight"
        words += (f"; {which} ranged {min(effective):.2g} to {max(effective):.2g} across subjects, median "
                  f"{float(np.median(effective)):.2g}")
    return words + ")"


def _mask_words(q: dict) -> str:
    erode = "one voxel" if q["mask_erode_mm"] is None else f"{_num(q['mask_erode_mm'])} mm"
    magnitude = (f"the first-echo magnitude's brain mask (the scalp detached by a {_num(q['mask_detach_mm'])} mm "
                 f"erosion, the result eroded by {erode})")
    if q["mask_source"] == "t1":
        return (f"The QSM mask was {magnitude} within the T1's brain mask carried to the GRE grid by the rigid "
                f"coregistration")
    return f"The QSM mask was {magnitude}"


def _normalisation_words(a: dict, study_template: bool) -> str:
    target = ("a study template (the mean of the cohort's normalised images after a first normalisation to the "
              "MNI ICBM 2009 templates, to which every subject was normalised again)" if study_template
              else "the MNI ICBM 2009 templates")
    t1 = (f"The T1 brain was registered to the MNI T1 by an affine and SyN ({a['syn_metric']}, iterations "
          f"{_num(a['syn_iterations'])}), which brought the tissue priors to the subject.")
    if a["normalise_on"] == "tissue":
        return (f"{t1} The normalisation to {target} was a SyN of the subject's GM and WM posteriors to the target's "
                f"GM and WM maps ({a['tissue_metric']}, iterations {_num(a['tissue_iterations'])}) from the same "
                f"affine.")
    return f"{t1} That SyN of the T1 to {target} was the normalisation."


def _qc_words(spec: StudySpec) -> str:
    c = spec.qc
    return (f"Subjects were excluded whose warped GM correlated with the template's GM below {_num(c.min_gm_correlation)}"
            f" or whose warped T1 correlated with the template's T1 below {_num(c.min_t1_correlation)}, whose TIV lay "
            f"outside {_num(c.min_tiv_ml)}–{_num(c.max_tiv_ml)} ml or GM share of TIV outside "
            f"{_num(c.min_gm_fraction)}–{_num(c.max_gm_fraction)}, or whose brain mask ended more than "
            f"{_num(c.max_brain_top_gap_mm)} mm below the top of the head.")


def _svc_words(spec: StudySpec) -> str:
    if not spec.svc:
        return "no small volume"
    parts = []
    for s in spec.svc:
        if s.centre_mm is not None:
            sphere = f"a {_num(s.radius_mm)} mm sphere at ({', '.join(_num(float(v)) for v in s.centre_mm)}) mm"
            parts.append(f"{sphere} within the AAL2 region {s.region}" if s.region else sphere)
        else:
            parts.append(f"the whole AAL2 region {s.region}")
    return "; ".join(f"{s.name}: {p}" for s, p in zip(spec.svc, parts))


def _permutation_words(spec: StudySpec) -> str:
    inf = spec.inference
    if not inf.permutations:
        return "Whole-brain clusters were judged by their cluster-level FWE p from random field theory."
    tfce = " and TFCE (E 0.5, H 2)" if inf.tfce else ""
    return (f"Whole-brain clusters were judged by their FWE p from {inf.permutations} Freedman–Lane permutations "
            f"(cluster mass{tfce}, seed {inf.permutation_seed}); peak and small-volume p-values are random field "
            f"theory's.")


def _roi_words(spec: StudySpec) -> str:
    sources = []
    if spec.roi.from_contrasts:
        sources.append(f"the clusters and small volumes of {', '.join(spec.roi.from_contrasts)} significant at "
                       f"FWE α = {_num(spec.inference.svc_alpha)}")
    sources.extend(f"{r.name} ({r.region or ''}{' ' if r.region and r.centre_mm else ''}"
                   f"{f'{_num(r.radius_mm)} mm sphere at {tuple(r.centre_mm)}' if r.centre_mm else ''})"
                   for r in spec.roi.regions)
    return ("Mean χ and smoothed modulated GM were extracted per subject from the ROIs: "
            + ("; ".join(sources) if sources else "none were defined") + ".")


def methods_context(spec: StudySpec, qsm_params: dict, anat_params: dict, n_used: int, n_excluded: int,
                    chains: list[dict] | None = None) -> dict:
    """What the methods template reads: recorded parameters (today's defaults only for keys an older store
    did not record), the spec, and phrases for each choice."""
    chains = list(chains or [])
    q = {**QSMParams().to_dict(), **(qsm_params or {})}
    a = {**AnatParams().to_dict(), **(anat_params or {})}
    warned = [c["r2star_warning"] for c in chains if c.get("r2star_warning")]
    cl = spec.clinical
    return {
        "qsm": q, "anat": a, "spec": spec, "inf": spec.inference, "clinical": cl, "n_used": n_used,
        "n_excluded": n_excluded, "n_qsm": len(chains), "mni_voxel": spec.mni_voxel_size,
        "mask_words": _mask_words(q), "ringing_words": _ringing_words(q, chains),
        "combine_words": _COMBINE.get(q["combine"], q["combine"]), "unwrap_words": _UNWRAP.get(q["unwrapper"], q["unwrapper"]),
        "inversion_words": _inversion_words(q, chains), "reference_words": _REFERENCE[q["reference"]],
        "r2star_warned": len(warned), "r2star_example": warned[0].split(": ", 1)[-1].split(";")[0] if warned else "",
        "extraction_words": _extraction_words(a),
        "normalisation_words": _normalisation_words(a, bool(a.get("fixed") == "study" or spec.study_template)),
        "qc_words": _qc_words(spec),
        "contrast_words": "; ".join(f"{c.name}: {c.map}, {c.weights}" for c in spec.contrasts) or "none",
        "covariate_words": " and ".join(spec.covariates) or "no covariates",
        "permutation_words": _permutation_words(spec), "svc_words": _svc_words(spec), "roi_words": _roi_words(spec),
        "roi_covariate_words": " and ".join(cl.roi_covariates) or "no covariates",
        "partial_words": " and ".join(cl.partial_covariates) or "nothing",
    }


def methods_text(spec: StudySpec, qsm_params: dict, anat_params: dict, n_used: int, n_excluded: int,
                 chains: list[dict] | None = None) -> list[str]:
    """The methods, as paragraphs rendered from ``templates/methods.txt.j2``."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("ferritin.engine.report", "templates"),
                             undefined=jinja2.StrictUndefined, autoescape=False)
    env.filters["num"] = _num
    text = env.get_template("methods.txt.j2").render(
        **methods_context(spec, qsm_params, anat_params, n_used, n_excluded, chains))
    return [" ".join(p.split()) for p in text.split("\n\n") if p.strip()]
