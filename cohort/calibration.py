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
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from .published import CHI_PEAKS, GM_ROIS, N_PER_GROUP

__all__ = ["DEEP_GREY", "RETENTION", "EFFECT_TO_NOISE", "region_class", "severity_moments", "severity_cv2",
           "expected_t", "amplitude_for_t", "calibrated_effects", "published_targets"]

#: AAL region name prefixes of the deep grey nuclei; every other region counts as cortex
DEEP_GREY = ("Thalamus", "Caudate", "Putamen", "Pallidum")

#: ``e = β · E[f] / σ`` of the uncalibrated reference effects (``simulate.REFERENCE_EFFECTS``) in the
#: ground truth — χ: at the voxel of the effect's region where it is largest; GM: of the smoothed
#: modulated GM's mean in the effect's core (negative: a loss).  ``benchmarks/calibration.py`` on three
#: calibration cohorts (seeds 100 and 101, and 100 with the GM effects three times larger), 10 + 10 at
#: 3 mm, 12 echoes; docs/validation.md.
EFFECT_TO_NOISE = {
    "precentral_L": {"chi": 5.427, "gm": -0.912},
    "thalamus_R": {"chi": 7.227, "gm": -1.084},
    "thalamus_L": {"chi": 5.284, "gm": -0.748},
}

#: ferritin's effect-to-noise ratio ÷ the ground truth's on the same cohorts, per (modality, region
#: class), the effects of a class summed.  Same command and cohorts.
RETENTION = {
    ("chi", "cortex"): 0.505,
    ("chi", "deep grey"): 0.497,
    ("gm", "cortex"): 0.386,
    ("gm", "deep grey"): 0.216,
}


def region_class(region: str) -> str:
    """``"deep grey"`` for the deep grey nuclei of AAL (``Thalamus_R``, ...), else ``"cortex"``."""
    return "deep grey" if str(region).startswith(DEEP_GREY) else "cortex"


def severity_moments(severity_gain: float) -> tuple[float, float]:
    """``E[f]`` and ``var(f) / E[f]²`` of ``f = max(0, 1 + gain · s)`` for a standard normal ``s``.

    How much of an effect a patient carries on average, and the share of a
    patient group's spread the effect brings with it: the effect adds
    ``a · E[f]`` to the patients' mean and ``a² · var(f)`` to their variance.
    """
    if severity_gain < 0:
        raise ValueError(f"severity_gain must be >= 0, got {severity_gain}")
    s = np.linspace(-10.0, 10.0, 200001)
    w = np.exp(-0.5 * s**2)
    w /= w.sum()
    f = np.maximum(0.0, 1.0 + severity_gain * s)
    mean = float((w * f).sum())
    return mean, float((w * f**2).sum()) / mean**2 - 1.0


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


def published_targets() -> dict:
    """The published statistic each reference effect is calibrated to: ``{effect: {"chi": T, "gm": T}}``."""
    chi = {p.name: p.T for p in CHI_PEAKS if p.significant}
    gm = {name: roi.T for roi in GM_ROIS for name in roi.regions}
    return {name: {"chi": chi[name], "gm": gm[name]} for name in chi}


def calibrated_effects(effects, effect_to_noise: dict | None = None, retention: dict | None = None,
                       targets: dict | None = None, n_per_group: int = N_PER_GROUP,
                       max_gm_loss: float = 0.5) -> tuple:
    """The effects with amplitudes such that ferritin measures the ``targets`` T values.

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

    Returns
    -------
    tuple of Effect with ``chi_ppm`` and ``gm_fraction`` scaled (severity gain unchanged).  A GM
    loss beyond ``max_gm_loss`` is planted at ``max_gm_loss``: the reproduction then shows the shortfall.
    """
    effect_to_noise = EFFECT_TO_NOISE if effect_to_noise is None else effect_to_noise
    retention = RETENTION if retention is None else retention
    targets = published_targets() if targets is None else targets
    out = []
    for e in effects:
        missing = [d for d, ok in (("effect_to_noise", e.name in effect_to_noise), ("targets", e.name in targets))
                   if not ok]
        if missing:
            raise ValueError(f"effect {e.name!r} has no calibration in {missing}")
        cls = region_class(e.region)
        cv2 = severity_cv2(e.severity_gain)
        scale = {}
        for modality in ("chi", "gm"):
            share = retention[(modality, cls)]
            if not 0 < share:
                raise ValueError(f"retention of {modality} in {cls} must be positive, got {share}")
            # the truth's amplitude for the target, then more by as much as ferritin loses
            scale[modality] = amplitude_for_t(effect_to_noise[e.name][modality], targets[e.name][modality],
                                              n_per_group, cv2) / share
        gm = max(e.gm_fraction * scale["gm"], -max_gm_loss)
        out.append(replace(e, chi_ppm=e.chi_ppm * scale["chi"], gm_fraction=gm))
    return tuple(out)
