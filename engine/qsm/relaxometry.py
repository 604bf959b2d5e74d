"""R2* (and T2*) from the multi-echo magnitude: the second iron marker of a QSM study.

The magnitude of a gradient echo decays as ``S(TE) = S0 exp(-R2* TE)``.  A
log-linear fit is exact without noise, but a magnitude is Rician: where the
signal nears the noise floor its logarithm is biased upwards and the decay
looks slower.  The fit here takes the noise's share out of each magnitude
(a Rician magnitude's mean square is ``A² + 2σ²``), leaves out the echoes
whose signal is then below ``min_snr`` times the noise, voxel by voxel, and
fits ``log S`` by least squares weighted by ``S²`` (the inverse variance of
``log S``).  The noise ``σ`` comes from the background (outside the head).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .mask import largest_component, otsu_threshold

__all__ = ["r2star_loglinear", "background_noise_sd", "r2star_warning", "MIN_R2STAR_ECHOES", "MIN_R2STAR_SPAN"]

#: An R2* fit needs a decay it can see: at least this many echoes, spread over at least this
#: span (s), over which tissue of R2* 20 /s loses 10 % of its signal.  Two echoes 2.3 ms apart
#: see a 5 % decay: the slope is then mostly noise and the magnitude's truncation ringing,
#: which differs between echoes.
MIN_R2STAR_ECHOES = 3
MIN_R2STAR_SPAN = 0.005


def background_noise_sd(magnitude: np.ndarray, head: np.ndarray | None = None) -> float:
    """Noise standard deviation of a magnitude image from the air around the head (Rayleigh statistics).

    In air a magnitude image is Rayleigh distributed; the median of the voxels
    outside the head, grown by three voxels, gives ``σ`` robustly.  Without
    ``head``, the head is the largest part above half the Otsu threshold, filled.
    Returns NaN when there is too little background to tell (a field of view
    filled by the head, or a background the scanner set to zero).
    """
    magnitude = np.asarray(magnitude, float)
    if head is None:
        positive = magnitude[magnitude > 0]
        if positive.size == 0:
            return float("nan")
        head = ndimage.binary_fill_holes(largest_component(magnitude > 0.5 * otsu_threshold(positive)))
    head = ndimage.binary_dilation(np.asarray(head, bool), iterations=3)
    air = magnitude[~head]
    air = air[np.isfinite(air) & (air > 0)]
    if air.size < 100:
        return float("nan")
    return float(np.median(air) / np.sqrt(2.0 * np.log(2.0)))  # Rayleigh median = σ √(2 ln 2)


def r2star_loglinear(magnitude: np.ndarray, echo_times, mask: np.ndarray, noise_sd: float | None = None,
                     min_snr: float = 3.0, min_echoes: int = 2) -> np.ndarray:
    """R2* (1/s) in ``mask`` by a weighted log-linear fit of the echoes above the noise floor.

    Parameters
    ----------
    magnitude : ndarray (echo, x, y, z)
    echo_times : echo times in seconds, increasing.
    mask : where to fit.
    noise_sd : the magnitude's noise standard deviation; None: no echo is left out for noise.
    min_snr : echoes below ``min_snr * noise_sd`` are left out of a voxel's fit.
    min_echoes : voxels with fewer usable echoes are NaN.

    Returns
    -------
    ndarray (x, y, z), float32
        R2* in 1/s; NaN outside ``mask`` and where too few echoes are usable.
        T2* (s) is its reciprocal.
    """
    mag = np.asarray(magnitude, dtype=np.float64)
    te = np.asarray(echo_times, dtype=np.float64).ravel()
    mask = np.asarray(mask, dtype=bool)
    if mag.ndim != 4 or mag.shape[0] != te.size:
        raise ValueError(f"magnitude must be (echo, x, y, z) with one echo per echo time; got {mag.shape} and "
                         f"{te.size} echo times")
    if te.size < 2 or np.any(np.diff(te) <= 0):
        raise ValueError(f"R2* needs at least two increasing echo times, got {te.tolist()}")
    if mask.shape != mag.shape[1:]:
        raise ValueError(f"mask shape {mask.shape} differs from the image shape {mag.shape[1:]}")
    s = mag[:, mask]  # (echo, voxel)
    floor = 0.0
    if noise_sd is not None and np.isfinite(noise_sd) and noise_sd > 0:
        floor = min_snr * float(noise_sd)
        # a magnitude's mean square is A² + 2σ²: the noise's share taken out before the logarithm
        s = np.sqrt(np.clip(s**2 - 2.0 * float(noise_sd) ** 2, 0.0, None))
    usable = (s > floor) & (s > 0)
    slope, intercept = _weighted_line(s, te, usable)
    if floor > 0:
        # Echoes chosen by their own noisy value favour those that noise lifted: choose again by the
        # first fit's prediction, which no single echo's noise moves.
        predicted = np.exp(intercept[None, :] + slope[None, :] * te[:, None])
        usable = (predicted > floor) & (s > 0)
        slope, _ = _weighted_line(s, te, usable)
    slope[usable.sum(0) < min_echoes] = np.nan
    out = np.full(mask.shape, np.nan, np.float32)
    out[mask] = -slope
    return out


def _weighted_line(s: np.ndarray, te: np.ndarray, usable: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Slope and intercept of ``log s`` against ``te`` per voxel (columns), weighted by ``s²`` where usable."""
    w = np.where(usable, s**2, 0.0)
    y = np.log(np.where(usable, s, 1.0))
    t = te[:, None]
    sw, swt, swtt = w.sum(0), (w * t).sum(0), (w * t * t).sum(0)
    swy, swty = (w * y).sum(0), (w * t * y).sum(0)
    det = sw * swtt - swt**2
    with np.errstate(divide="ignore", invalid="ignore"):
        slope = (sw * swty - swt * swy) / det
        intercept = (swy - slope * swt) / sw
    bad = ~(det > 0)
    slope[bad], intercept[bad] = np.nan, np.nan
    return slope, intercept


def r2star_warning(echo_times) -> str | None:
    """Why an acquisition's R2* should not be trusted, or None when it can be.

    Fewer than :data:`MIN_R2STAR_ECHOES` echoes, or echoes spread over less
    than :data:`MIN_R2STAR_SPAN`, cannot measure a decay of tissue's rate.
    """
    te = np.asarray(echo_times, dtype=float).ravel()
    problems = []
    if te.size < MIN_R2STAR_ECHOES:
        problems.append(f"{te.size} echo{'es' if te.size != 1 else ''} (at least {MIN_R2STAR_ECHOES} are needed)")
    if te.size and np.ptp(te) < MIN_R2STAR_SPAN:
        problems.append(f"echoes {np.ptp(te) * 1e3:.1f} ms apart from first to last (at least "
                        f"{MIN_R2STAR_SPAN * 1e3:.0f} ms are needed)")
    if not problems:
        return None
    return "R2* unreliable: " + " and ".join(problems) + "; tissue's decay is not measurable from these echoes"
