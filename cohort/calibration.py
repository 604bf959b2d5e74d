"""Planted effects calibrated so that ferritin *measures* the reference study's statistics.

The published T values are measurements through a pipeline that loses part
of any effect.  A simulated cohort that should reproduce them therefore
plants, for every effect,

    amplitude = (amplitude whose ground truth gives the published T) ÷ retention

where the retention is the share of the ground truth's effect-to-noise
ratio ``e`` (below) that ferritin keeps for that kind of effect: one figure
per modality (χ, GM) and region class (cortex, deep grey), measured by
``benchmarks/calibration.py`` (command, seeds and commit in
``docs/validation.md``).  An amplitude enters T only through ``x · e``, so
with ferritin's ``e`` the retention's share of the truth's, ferritin expects
the published T exactly at the truth's amplitude for it ÷ the retention.
χ is judged by its peak T in the effect's small volume (``e`` at the voxel
where it is largest), GM by the ANCOVA T of the ROI mean, as the study
judged them.

What amplitude gives a T in the ground truth follows from the simulator's
model of a group effect: each patient carries ``max(0, 1 + gain · s)`` of it
(``s`` the latent severity), so the patients' spread grows with the
amplitude, and T does not grow in proportion.  With the effect's size
``β`` at the reference amplitude, the subjects' spread without it ``σ``
(both measured in the ground truth by regression on the known severity) and
``e = β · E[f] / σ``, a design of ``n`` per group expects
``T(x) = √(n/2) · x e / √(1 + cv² x² e² / 2)`` at ``x`` times the reference
amplitude (:func:`expected_t`), which :func:`amplitude_for_t` inverts.

The gains are calibrated to the published correlations in the patients.
With one latent severity behind every ROI and clinical score, a correlation
is the product of the two variables' correlations with the severity (their
loadings); :func:`severity_loadings` fits those to the published table.  An
ROI's loading and its published T then fix the gain
(:func:`gain_for_loading`), and the clinical scores' noise follows from
theirs (:func:`score_noise`).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from scipy.optimize import brentq, least_squares

from .effects import REFERENCE_EFFECTS
from .published import CHI_PEAKS, CORRELATIONS, GM_ROIS, N_PER_GROUP

__all__ = ["DEEP_GREY", "RETENTION", "EFFECT_TO_NOISE", "SEVERITY_SCORES", "region_class", "severity_moments",
           "severity_cv2", "expected_t", "amplitude_for_t", "MAX_GAIN", "max_loading", "reachable_loadings",
           "severity_loadings", "effect_loadings", "gain_for_loading", "score_noise",
           "calibrated_effects", "published_targets", "power_matched_part", "expected_ferritin_t"]

#: the clinical scores that measure the patients' severity; the one-factor fit gives them one loading
SEVERITY_SCORES = ("umn", "alsfrs_r")

#: The largest severity gain planted: at 2 a third of the patients (severity below −½) carry none of an
#: effect.  A correlation with the severity beyond what this allows is fitted at the bound.
MAX_GAIN = 2.0

#: the maps of the published correlations for each modality of an effect
_MAPS = {"chi": "chi", "gm": "gm_mod_s"}

#: AAL region name prefixes of the deep grey nuclei; every other region counts as cortex
DEEP_GREY = ("Thalamus", "Caudate", "Putamen", "Pallidum")

#: ``e = β · E[f] / σ`` of the uncalibrated reference effects (``simulate.REFERENCE_EFFECTS``) in the
#: ground truth, ``β`` per unit of a patient's share ``f`` and ``E[f]`` at the effect's own gain — χ: at the
#: voxel of the effect's region where it is largest; GM: of the smoothed modulated GM's mean in the
#: effect's core (negative: a loss).  ``benchmarks/calibration.py`` on three cohorts of the reference
#: design (34 + 34 at 3 mm, 12 echoes, seeds 0-2, the effects planted as calibrated before); docs/validation.md.
EFFECT_TO_NOISE = {
    "precentral_L": {"chi": 4.995, "gm": -0.813},
    "thalamus_R": {"chi": 5.996, "gm": -0.951},
    "thalamus_L": {"chi": 5.118, "gm": -0.679},
}

#: ferritin's effect-to-noise ratio ÷ the ground truth's on the same cohorts, per (modality, region
#: class), the effects of a class summed.  Same command and cohorts.
RETENTION = {
    ("chi", "cortex"): 0.513,
    ("chi", "deep grey"): 0.520,
    ("gm", "cortex"): 0.434,
    ("gm", "deep grey"): 0.385,
}


def region_class(region: str) -> str:
    """``"deep grey"`` for the deep grey nuclei of AAL (``Thalamus_R``, ...), else ``"cortex"``."""
    return "deep grey" if str(region).startswith(DEEP_GREY) else "cortex"


def _severity_quadrature(severity_gain: float) -> tuple[float, float, float]:
    """``E[f]``, ``var(f)`` and ``cov(f, s)`` of ``f = max(0, 1 + gain · s)``, ``s`` standard normal."""
    if severity_gain < 0:
        raise ValueError(f"severity_gain must be >= 0, got {severity_gain}")
    s = np.linspace(-10.0, 10.0, 200001)
    w = np.exp(-0.5 * s**2)
    w /= w.sum()
    f = np.maximum(0.0, 1.0 + severity_gain * s)
    mean = float((w * f).sum())
    return mean, float((w * f**2).sum()) - mean**2, float((w * f * s).sum())


def severity_moments(severity_gain: float) -> tuple[float, float]:
    """``E[f]`` and ``var(f) / E[f]²`` of ``f = max(0, 1 + gain · s)`` for a standard normal ``s``.

    How much of an effect a patient carries on average, and the share of a
    patient group's spread the effect brings with it: the effect adds
    ``a · E[f]`` to the patients' mean and ``a² · var(f)`` to their variance.
    """
    mean, var, _ = _severity_quadrature(severity_gain)
    return mean, var / mean**2


def severity_cv2(severity_gain: float) -> float:
    """Squared coefficient of variation of a patient's share of an effect (:func:`severity_moments`)."""
    return severity_moments(severity_gain)[1]


def expected_t(effect_to_noise: float, scale: float, n_per_group: int, cv2: float) -> float:
    """Expected two-sample T of an effect ``scale`` times its reference amplitude (see the module docstring)."""
    e = abs(float(effect_to_noise)) * float(scale)
    return float(np.sqrt(n_per_group / 2.0) * e / np.sqrt(1.0 + cv2 * e**2 / 2.0))


def amplitude_for_t(effect_to_noise: float, t_target: float, n_per_group: int, cv2: float) -> float:
    """The factor on an effect's reference amplitude at which its expected T is ``t_target``.

    Inverts :func:`expected_t`: ``x = T / (e · √(n/2 − cv² T² / 2))``.  No amplitude gives a T
    of ``√(n / cv²)`` or more: the severity spread grows with the effect.

    Raises
    ------
    ValueError
        When the target is out of reach or the inputs are not an effect size, a T and a group size.
    """
    e, t = abs(float(effect_to_noise)), abs(float(t_target))
    if e <= 0 or t <= 0 or n_per_group < 2 or cv2 < 0:
        raise ValueError(f"need an effect-to-noise ratio > 0, a T > 0, n_per_group >= 2 and cv2 >= 0; got "
                         f"{effect_to_noise}, {t_target}, {n_per_group}, {cv2}")
    room = n_per_group / 2.0 - cv2 * t**2 / 2.0
    if room <= 0:
        raise ValueError(f"T = {t:.2f} cannot be reached: at most {np.sqrt(n_per_group / cv2):.2f} with "
                         f"{n_per_group} per group and cv² = {cv2:.3f}")
    return float(t / (e * np.sqrt(room)))


def power_matched_part(gain: float, k: float) -> tuple[float, float]:
    """The amplitude factor and gain that keep an effect's expected T when the group size is ``1/k²`` times.

    Under :func:`expected_t`, T has a mean part ``√n · x · E[f]`` and a spread part ``x · sd(f)``
    relative to the effect-to-noise ratio, whatever that ratio is.  Both stay those of the reference
    design when the gain ``g'`` has ``cv(g') = cv(g) / k`` and the amplitude is
    ``k · E[f](g) / E[f](g')`` times the reference one.  For a small gain this is the amplitude × ``k``
    and the gain ÷ ``k``; a large gain, whose share ``f = max(0, 1 + g s)`` is cut at zero for many
    patients, needs the exact solution.

    Returns
    -------
    (amplitude factor, gain)
    """
    if k <= 0 or gain < 0:
        raise ValueError(f"need k > 0 and gain >= 0, got k = {k}, gain = {gain}")
    if gain == 0:
        return float(k), 0.0

    def cv(g):
        return np.sqrt(severity_cv2(g))

    target = cv(gain) / k
    if k == 1:
        new = gain
    elif k > 1:
        new = brentq(lambda g: cv(g) - target, 0.0, gain, xtol=1e-10)
    else:  # a larger cohort: more of the spread from the severity, if any gain gives it
        hi = gain
        while cv(hi) < target:
            if hi > 1e3:
                raise ValueError(f"no gain has cv {target:.3f}: the severity's spread cannot grow that much")
            hi *= 2
        new = brentq(lambda g: cv(g) - target, gain, hi, xtol=1e-10)
    return float(k * _severity_quadrature(gain)[0] / _severity_quadrature(new)[0]), float(new)


def _loading_at(gain: float, d: float) -> float:
    """Correlation with the severity, in the patients, of an effect with standardised difference ``d`` at
    ``gain`` (NaN where no amplitude gives that ``d``); see :func:`gain_for_loading`."""
    mean, var, cov = _severity_quadrature(gain)
    room = mean**2 - d**2 * var / 2.0
    if room <= 0:
        return np.nan
    u = d / np.sqrt(room)
    return float(u * cov / np.sqrt(1.0 + u**2 * var))


def _gain_grid(max_gain: float) -> np.ndarray:
    return np.geomspace(1e-4, max_gain, 300)


def max_loading(t: float, n_per_group: int, max_gain: float = MAX_GAIN) -> float:
    """The highest correlation with the severity that an effect of two-sample T ``t`` reaches at a gain
    up to ``max_gain``."""
    d = abs(float(t)) / np.sqrt(n_per_group / 2.0)
    return float(np.nanmax([_loading_at(g, d) for g in _gain_grid(max_gain)]))


def gain_for_loading(loading: float, t: float, n_per_group: int, max_gain: float = MAX_GAIN) -> float:
    """The severity gain at which a group effect of two-sample T ``t`` correlates ``loading`` with the severity.

    The patients carry ``a · f`` over a spread ``σ``, ``f = max(0, 1 + g · s)``.  The T fixes
    ``u = a / σ`` for each gain (``T / √(n/2) = u E[f] / √(1 + u² var f / 2)``), and the correlation
    with ``s`` in the patients is ``u cov(f, s) / √(1 + u² var f)``; the gain solves the second for
    ``loading``.

    Raises
    ------
    ValueError
        When no gain up to ``max_gain`` gives that correlation at that T (see :func:`max_loading`).
    """
    d = abs(float(t)) / np.sqrt(n_per_group / 2.0)
    if not 0 < loading < 1 or d <= 0:
        raise ValueError(f"need a loading in (0, 1) and a T other than 0, got {loading} and {t}")
    gains = _gain_grid(max_gain)
    rho = np.array([_loading_at(g, d) for g in gains])
    above = np.flatnonzero(np.isfinite(rho) & (rho >= loading))
    if not len(above) or above[0] == 0:
        raise ValueError(f"a T of {abs(t):.2f} at {n_per_group} per group correlates at most "
                         f"{np.nanmax(rho):.3f} with the severity at a gain up to {max_gain}, not {loading:.3f}")
    lo, hi = gains[above[0] - 1], gains[above[0]]
    return float(brentq(lambda g: _loading_at(g, d) - loading, lo, hi, xtol=1e-10))


def reachable_loadings(n_per_group: int = N_PER_GROUP, max_gain: float = MAX_GAIN) -> dict:
    """``{(map, roi): λ}``: the highest loading each published ROI can have, from its effects' published T
    (χ: each small volume's peak, the lowest of them; GM: the ROI's ANCOVA)."""
    chi = {p.name: p.T for p in CHI_PEAKS if p.significant}
    out = {}
    for roi in GM_ROIS:
        out[("chi", roi.name)] = min(max_loading(chi[r], n_per_group, max_gain) for r in roi.regions)
        out[("gm_mod_s", roi.name)] = max_loading(roi.T, n_per_group, max_gain)
    return out


def severity_loadings(correlations=CORRELATIONS, scores=SEVERITY_SCORES, upper: dict | None = None) -> dict:
    """Each variable's correlation with the latent severity, fitted to a table of correlations.

    A one-factor model: the patients' ROI means and clinical scores each
    follow one severity plus their own noise, so ``R(x, y) = λx · λy``.  The
    loadings are fitted by least squares to the table's ``|R|``, each at most
    its ``upper`` bound (an effect of a given T can only correlate so much
    with the severity, :func:`max_loading`); the ``scores`` share one loading
    (they measure the same severity).

    Parameters
    ----------
    correlations : sequence of :class:`~ferritin.cohort.published.Correlation`
    scores : the clinical score columns that share a loading
    upper : ``{(map, roi): bound}``; default :func:`reachable_loadings`, 0.99 for anything not in it

    Returns
    -------
    dict
        ``{(map, roi): λ}`` for ROI means and ``{score: λ}`` for the scores, magnitudes in (0, 1).
    """
    upper = reachable_loadings() if upper is None else upper

    def key(v):
        return "clinical" if v in scores else (v if isinstance(v, str) else tuple(v))

    names = sorted({key(v) for c in correlations for v in (c.x, c.y)}, key=str)
    for c in correlations:
        if not 0 < abs(c.R) < 1:
            raise ValueError(f"correlation {c.name!r}: R must lie in (-1, 1) and not be 0, got {c.R}")
    pairs = [(names.index(key(c.x)), names.index(key(c.y)), abs(c.R)) for c in correlations]
    hi = np.array([min(float(upper.get(n, 0.99)), 0.99) for n in names])
    fit = least_squares(lambda x: [x[i] * x[j] - r for i, j, r in pairs], hi / 2, bounds=(np.full(len(hi), 1e-3), hi))
    loadings = dict(zip(names, fit.x.tolist()))
    clinical = loadings.pop("clinical", None)
    if clinical is not None:
        loadings.update({s: clinical for s in scores})
    return loadings


def score_noise(slope: float, loading: float) -> float:
    """SD about the line ``slope · s`` at which a score correlates ``loading`` with ``s`` (standard normal)."""
    if not 0 < loading < 1:
        raise ValueError(f"loading must lie in (0, 1), got {loading}")
    return float(abs(slope) * np.sqrt(1.0 / loading**2 - 1.0))


def effect_loadings(loadings: dict | None = None) -> dict:
    """``{effect: {"chi": λ, "gm": λ}}``: each effect's loading from its ROI (the effect is one of the ROI's
    small volumes); modalities without a published correlation are left out."""
    loadings = severity_loadings() if loadings is None else loadings
    out = {}
    for roi in GM_ROIS:
        for name in roi.regions:
            out[name] = {m: loadings[(mp, roi.name)] for m, mp in _MAPS.items() if (mp, roi.name) in loadings}
    return out


def expected_ferritin_t(effect, modality: str, n_per_group: int) -> float | None:
    """The T that ferritin is expected to measure for one part of a planted reference effect.

    For an effect named as one of the reference effects (``EFFECT_TO_NOISE``), at whatever amplitude
    and gain it is planted: its ground truth's effect-to-noise ratio scaled to that amplitude and
    gain, times the retention of its modality and region class, through :func:`expected_t`.  The
    sign is the part's (χ up, GM down).  ``None`` for an effect the calibration has not measured.
    """
    reference = {e.name: e for e in REFERENCE_EFFECTS}.get(effect.name)
    if reference is None or effect.name not in EFFECT_TO_NOISE:
        return None
    if modality not in _MAPS:
        raise ValueError(f"modality must be one of {sorted(_MAPS)}, got {modality!r}")
    field = "chi_ppm" if modality == "chi" else "gm_fraction"
    scale = getattr(effect, field) / getattr(reference, field)
    gain, reference_gain = effect.gain(modality), reference.gain(modality)
    e = (EFFECT_TO_NOISE[effect.name][modality] * RETENTION[(modality, region_class(effect.region))]
         * severity_moments(gain)[0] / severity_moments(reference_gain)[0])
    return float(np.sign(e) * expected_t(e, scale, n_per_group, severity_cv2(gain)))


def published_targets() -> dict:
    """The published statistic each reference effect is calibrated to: ``{effect: {"chi": T, "gm": T}}``."""
    chi = {p.name: p.T for p in CHI_PEAKS if p.significant}
    gm = {name: roi.T for roi in GM_ROIS for name in roi.regions}
    return {name: {"chi": chi[name], "gm": gm[name]} for name in chi}


def calibrated_effects(effects, effect_to_noise: dict | None = None, retention: dict | None = None,
                       targets: dict | None = None, n_per_group: int = N_PER_GROUP,
                       max_gm_loss: float = 0.5, loadings: dict | None = None) -> tuple:
    """The effects with amplitudes and severity gains such that ferritin measures the ``targets`` T values
    and the published correlations.

    Parameters
    ----------
    effects : sequence of :class:`~ferritin.cohort.simulate.Effect`
        Every effect needs an entry in ``effect_to_noise`` and ``targets`` (by name).
    effect_to_noise : ``{effect: {"chi": e, "gm": e}}`` of the ground truth at these amplitudes
        (default :data:`EFFECT_TO_NOISE`).
    retention : ``{(modality, region class): share}`` (default :data:`RETENTION`).
    targets : ``{effect: {"chi": T, "gm": T}}`` (default :func:`published_targets`).
    n_per_group : the design's group size that ``targets`` refer to.
    max_gm_loss : the largest regional GM loss planted (a share of the region).
    loadings : ``{effect: {"chi": λ, "gm": λ}}``, each part's correlation with the severity
        (default :func:`effect_loadings`); a part without one keeps the effect's gain.

    Returns
    -------
    tuple of Effect with ``chi_ppm`` and ``gm_fraction`` scaled and the gains
    (``severity_gain``, ``gm_severity_gain``) from the loadings.  A GM loss beyond ``max_gm_loss`` is
    planted at ``max_gm_loss``: the reproduction then shows the shortfall.
    """
    effect_to_noise = EFFECT_TO_NOISE if effect_to_noise is None else effect_to_noise
    retention = RETENTION if retention is None else retention
    targets = published_targets() if targets is None else targets
    loadings = effect_loadings() if loadings is None else loadings
    out = []
    for e in effects:
        missing = [d for d, ok in (("effect_to_noise", e.name in effect_to_noise), ("targets", e.name in targets))
                   if not ok]
        if missing:
            raise ValueError(f"effect {e.name!r} has no calibration in {missing}")
        cls = region_class(e.region)
        scale, gain = {}, {}
        for modality in ("chi", "gm"):
            share = retention[(modality, cls)]
            if not 0 < share:
                raise ValueError(f"retention of {modality} in {cls} must be positive, got {share}")
            target = targets[e.name][modality]
            loading = loadings.get(e.name, {}).get(modality)
            gain[modality] = e.gain(modality) if loading is None else gain_for_loading(loading, target, n_per_group)
            # e was measured at the effect's own gain: a patient carries E[f] of the effect on average
            e2n = effect_to_noise[e.name][modality] * (severity_moments(gain[modality])[0]
                                                       / severity_moments(e.gain(modality))[0])
            # the truth's amplitude for the target, then more by as much as ferritin loses
            scale[modality] = amplitude_for_t(e2n, target, n_per_group, severity_cv2(gain[modality])) / share
        gm = max(e.gm_fraction * scale["gm"], -max_gm_loss)
        out.append(replace(e, chi_ppm=e.chi_ppm * scale["chi"], gm_fraction=gm, severity_gain=gain["chi"],
                           gm_severity_gain=gain["gm"]))
    return tuple(out)
