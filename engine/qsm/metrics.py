"""Accuracy metrics of susceptibility maps against a known truth (QSM challenge definitions),
and a truth-free measure of stripes and rings."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .inversion import reference_to_mean

__all__ = ["nrmse", "hfen", "region_mean_errors", "high_frequency_share"]


def _pair(chi, truth, mask):
    chi = np.asarray(chi, dtype=np.float64)
    truth = np.asarray(truth, dtype=np.float64)
    mask = np.asarray(mask, dtype=bool)
    if chi.shape != truth.shape or chi.shape != mask.shape or chi.ndim != 3:
        raise ValueError(f"chi {chi.shape}, truth {truth.shape} and mask {mask.shape} must be one 3-D shape")
    if not mask.any():
        raise ValueError("mask is empty")
    return reference_to_mean(chi, mask), reference_to_mean(truth, mask), mask


def nrmse(chi, truth, mask) -> float:
    """``100 ||chi - truth|| / ||truth||`` over the mask, both demeaned there (percent)."""
    c, t, m = _pair(chi, truth, mask)
    return float(100 * np.linalg.norm((c - t)[m]) / np.linalg.norm(t[m]))


def hfen(chi, truth, mask, sigma_vox: float = 1.5) -> float:
    """High-frequency error norm (Ravishankar & Bresler 2011; QSM challenge 2016), percent.

    Both maps (demeaned, zero outside the mask) are filtered by a Laplacian of
    Gaussian (σ = 1.5 voxels, as the challenge's 15³ kernel) and compared like
    :func:`nrmse`, so HFEN weighs edges and fine structure.
    """
    c, t, m = _pair(chi, truth, mask)
    lc = ndimage.gaussian_laplace(np.where(m, c, 0.0), sigma_vox, truncate=7 / sigma_vox)
    lt = ndimage.gaussian_laplace(np.where(m, t, 0.0), sigma_vox, truncate=7 / sigma_vox)
    return float(100 * np.linalg.norm((lc - lt)[m]) / np.linalg.norm(lt[m]))


def region_mean_errors(chi, truth, mask, labels, names: dict) -> dict[str, tuple[float, float]]:
    """Mean χ of each labelled region, estimated and true: ``{name: (estimate, truth)}`` (ppm)."""
    c, t, m = _pair(chi, truth, mask)
    out = {}
    for code, name in names.items():
        sel = (np.asarray(labels) == code) & m
        if sel.sum() >= 5:
            out[name] = (float(c[sel].mean()), float(t[sel].mean()))
    return out


def high_frequency_share(chi, mask, erode_vox: int = 2, cutoff: float = 0.7) -> float:
    """Share of χ's variance in the brain's core at the highest spatial frequencies.

    Stripes and rings (truncation ringing, amplified noise) live near the
    Nyquist frequency, anatomy mostly below it, so a clean map has a small
    share; no truth is needed, so it applies to real scans.  The core is the
    mask eroded by ``erode_vox`` voxels (6-connected), so the mask's own edge
    does not count; frequencies above ``cutoff`` times Nyquist (radially) are high.
    """
    chi = np.asarray(chi, dtype=np.float64)
    core = np.asarray(mask, dtype=bool)
    if chi.shape != core.shape or chi.ndim != 3:
        raise ValueError(f"chi {chi.shape} and mask {core.shape} must be one 3-D shape")
    for _ in range(erode_vox):
        core = core & np.roll(core, 1, 0) & np.roll(core, -1, 0) & np.roll(core, 1, 1) & np.roll(core, -1, 1) \
               & np.roll(core, 1, 2) & np.roll(core, -1, 2)
    if not core.any():
        raise ValueError("the mask has no core left after erosion")
    x = np.where(core, chi - chi[core].mean(), 0.0)
    power = np.abs(np.fft.fftn(x)) ** 2
    f = np.sqrt(sum(g**2 for g in np.meshgrid(*[np.fft.fftfreq(n) * 2 for n in x.shape], indexing="ij")))
    return float(power[f > cutoff].sum() / power.sum())
