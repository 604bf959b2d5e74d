"""Random field theory inference, numerically compatible with SPM12.

Functions follow SPM12 (r7771) names and conventions so that results can be
checked against SPM to the last digits:

==========================  =====================================
ferritin                    SPM12
==========================  =====================================
:func:`est_smoothness`      ``spm_est_smoothness``
:func:`resel_counts`        ``spm_resels_vol``
:func:`sphere_resels`,      ``spm_resels`` (SVC sphere / box)
:func:`box_resels`
:func:`ec_density`          ``spm_ECdensity``
:func:`p_rf`                ``spm_P_RF``
:func:`p_corrected`         ``spm_P`` (with the Bonferroni cap)
:func:`threshold_fwe`       ``spm_uc`` (``spm_uc_RF``, ``spm_uc_Bonf``)
:func:`height_threshold`    ``spm_u``
==========================  =====================================

Conventions: FWHM is in voxels; arrays are in (x, y, z) order; ``df`` is
``(df1, df2)`` — ``(1, v)`` for T, ``(k, v)`` for F, ``(1, inf)`` for Z;
``stat`` is ``"T"``, ``"F"``, ``"Z"`` or ``"X"`` (chi-squared).
References: Worsley et al. (1996) Hum Brain Mapp 4:58–73; Friston et al.
(1994) Hum Brain Mapp 1:210–220; Kiebel et al. (1999) NeuroImage 10:756–766.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy import special, stats

__all__ = [
    "resel_counts",
    "sphere_resels",
    "box_resels",
    "ec_density",
    "p_rf",
    "p_corrected",
    "p_uncorrected",
    "threshold_fwe",
    "height_threshold",
    "stat_cdf",
]

EPS = np.finfo(float).eps
FOUR_LN2 = 4.0 * np.log(2.0)
_STATS = ("T", "F", "Z", "X")


def _check_stat(stat: str, df) -> tuple[str, float, float]:
    stat = str(stat).upper()
    if stat not in _STATS:
        raise ValueError(f"stat must be one of {_STATS}, got {stat!r}")
    df = np.atleast_1d(np.asarray(df, dtype=float))
    if df.size == 1:
        df = np.array([1.0, df[0]])
    if df.size != 2 or np.any(df <= 0):
        raise ValueError(f"df must be (df1, df2) with positive entries, got {df.tolist()}")
    return stat, float(df[0]), float(df[1])


def _t_cdf(t, v):
    """Student t cdf through the incomplete beta function, as SPM's spm_Tcdf."""
    t = np.asarray(t, dtype=float)
    if np.isinf(v):
        return 0.5 + 0.5 * special.erf(t / np.sqrt(2))
    tail = special.betainc(v / 2, 0.5, v / (v + t**2)) / 2
    return np.where(t > 0, 1.0 - tail, tail)


def stat_cdf(u, df, stat: str):
    """Cumulative distribution of the statistic at ``u``."""
    stat, k, v = _check_stat(stat, df)
    u = np.asarray(u, dtype=float)
    if stat == "Z":
        return 0.5 + 0.5 * special.erf(u / np.sqrt(2))
    if stat == "T":
        return _t_cdf(u, v)
    if stat == "F":
        return stats.f.cdf(u, k, v)
    return stats.chi2.cdf(u, v)


def p_uncorrected(u, df, stat: str):
    """Voxelwise uncorrected p-value ``1 - cdf(u)`` (computed as SPM does)."""
    return 1.0 - stat_cdf(u, df, stat)


def height_threshold(alpha, df, stat: str):
    """``spm_u``: the statistic value whose uncorrected p-value is ``alpha``."""
    stat, k, v = _check_stat(stat, df)
    q = 1.0 - np.asarray(alpha, dtype=float)
    if stat == "Z":
        return stats.norm.ppf(q)
    if stat == "T":
        return stats.t.ppf(q, v)
    if stat == "F":
        return stats.f.ppf(q, k, v)
    return stats.chi2.ppf(q, v)


# ---------------------------------------------------------------------------
# EC densities


def ec_density(stat: str, u, df) -> np.ndarray:
    """Euler-characteristic densities rho_0..rho_3 (per resel^d) at thresholds ``u``.

    Parameters
    ----------
    stat : {"T", "F", "Z", "X"}
    u : float or array
        Thresholds.
    df : (df1, df2)

    Returns
    -------
    ndarray, shape (4,) for scalar ``u`` or (4, len(u))
    """
    stat, k, v = _check_stat(stat, df)
    scalar = np.ndim(u) == 0
    t = np.atleast_1d(np.asarray(u, dtype=float))
    a = FOUR_LN2
    rho = np.zeros((4, t.size))
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if stat == "Z":
            # SPM's spm_Ncdf is 0.5 + 0.5*erf(t/sqrt 2); 1 - that keeps SPM's rounding.
            rho[0] = 1.0 - (0.5 + 0.5 * special.erf(t / np.sqrt(2)))
            e = np.exp(-(t**2) / 2)
            rho[1] = a**0.5 / (2 * np.pi) * e
            rho[2] = a / (2 * np.pi) ** 1.5 * e * t
            rho[3] = a**1.5 / (2 * np.pi) ** 2 * e * (t**2 - 1)
        elif stat == "T":
            c = (1 + t**2 / v) ** ((1 - v) / 2)
            g = np.exp(special.gammaln((v + 1) / 2) - special.gammaln(v / 2))
            rho[0] = 1.0 - _t_cdf(t, v)
            rho[1] = a**0.5 / (2 * np.pi) * c
            rho[2] = a / (2 * np.pi) ** 1.5 * c * t * g / np.sqrt(v / 2)
            rho[3] = a**1.5 / (2 * np.pi) ** 2 * c * ((v - 1) * t**2 / v - 1)
        elif stat == "F":
            x = k * t / v
            A = a / (2 * np.pi)
            B = special.gammaln(v / 2) + special.gammaln(k / 2)
            w = (1 + x) ** (-(v + k - 2) / 2)
            rho[0] = 1.0 - stats.f.cdf(t, k, v)
            rho[1] = A**0.5 * np.sqrt(2) * np.exp(special.gammaln((v + k - 1) / 2) - B) * x ** ((k - 1) / 2) * w
            rho[2] = A * np.exp(special.gammaln((v + k - 2) / 2) - B) * x ** ((k - 2) / 2) * w * ((v - 1) * x - (k - 1))
            rho[3] = (A**1.5 / np.sqrt(2) * np.exp(special.gammaln((v + k - 3) / 2) - B) * x ** ((k - 3) / 2) * w
                      * ((v - 1) * (v - 2) * x**2 - (2 * v * k - v - k - 1) * x + (k - 1) * (k - 2)))
        else:  # chi-squared
            A = a / (2 * np.pi)
            b = t ** ((v - 1) / 2) * np.exp(-t / 2 - special.gammaln(v / 2)) / 2 ** ((v - 2) / 2)
            rho[0] = 1.0 - stats.chi2.cdf(t, v)
            rho[1] = A**0.5 * b
            rho[2] = A * b * (t - (v - 1))
            rho[3] = A**1.5 * b * (t**2 - (2 * v - 1) * t + (v - 1) * (v - 2))
    return rho[:, 0] if scalar else rho


# ---------------------------------------------------------------------------
# p-values


class RFResult(NamedTuple):
    """Output of :func:`p_rf`: corrected P, uncorrected cluster p, E[#clusters], E[resels/cluster]."""

    P: float
    p: float
    Ec: float
    Ek: float


def _as_resels(R) -> np.ndarray:
    R = np.atleast_1d(np.asarray(R, dtype=float))
    # The Euler characteristic R0 (and, for ragged masks, R1) can be negative;
    # SPM uses such counts as they are.
    if R.ndim != 1 or R.size == 0 or R.size > 4 or not np.all(np.isfinite(R)):
        raise ValueError(f"R must be up to 4 finite resel counts, got {R.tolist()}")
    nz = np.flatnonzero(R)
    if nz.size == 0:
        raise ValueError("R has no non-zero resel count")
    return R[: nz[-1] + 1]


def p_rf(c: int, k: float, u: float, df, stat: str, R, n: int = 1) -> RFResult:
    """``spm_P_RF``: probability of ``c`` or more clusters of ``k`` or more resels above ``u``.

    Parameters
    ----------
    c : int
        Number of clusters (1 for peak and cluster level).
    k : float
        Cluster extent in resels (0 for peak level).
    u : float
        Height threshold.
    df, stat
        Degrees of freedom and statistic type.
    R : array of up to 4 floats
        Resel counts [R0, R1, R2, R3] of the search volume.
    n : int
        Number of conjoined SPMs.
    """
    if c < 1 or int(c) != c:
        raise ValueError(f"c (number of clusters) must be a positive integer, got {c}")
    if k < 0:
        raise ValueError(f"k (cluster extent in resels) must be >= 0, got {k}")
    if n < 1 or int(n) != n:
        raise ValueError(f"n must be a positive integer, got {n}")
    R = _as_resels(R)
    D = R.size
    d = np.arange(1, D + 1)
    G = np.sqrt(np.pi) / special.gamma(d / 2)
    EC = np.maximum(ec_density(stat, float(u), df)[:D], EPS)
    first = EC * G
    # Upper-triangular Toeplitz matrix with first row EC .* G, to the n-th power.
    T = np.zeros((D, D))
    for i in range(D):
        T[i, i:] = first[: D - i]
    P = np.linalg.matrix_power(T, int(n))[0]
    EM = R / G * P
    Ec = float(EM.sum())
    EN = P[0] * R[D - 1]
    Ek = float(EN / EM[D - 1])
    Dc = D - 1
    if k == 0 or Dc == 0:
        p = 1.0
    else:
        beta = (special.gamma(Dc / 2 + 1) / Ek) ** (2 / Dc)
        p = float(np.exp(-beta * k ** (2 / Dc)))
    lam = (Ec + EPS) * p
    if lam <= 0:
        return RFResult(float("nan"), p, Ec, Ek)
    # SPM: 1 - spm_Pcdf... = 1 - (1 - gammainc(lambda, c)); kept literally so
    # that rounding matches SPM's values.
    Pc = 1.0 - (1.0 - special.gammainc(int(c), lam))
    return RFResult(float(Pc), p, Ec, Ek)


def p_corrected(c: int, k: float, u: float, df, stat: str, R, n: int = 1, S: float | None = None) -> float:
    """``spm_P``: RFT-corrected p-value, capped by Bonferroni over ``S`` voxels.

    The Bonferroni cap ``min(1, S * p_unc(u)^n)`` applies to peak-level
    p-values (``c == 1`` and ``k == 0``) when ``S`` is given and the search
    region is not a single point (``R != 1``).
    """
    P = p_rf(c, k, u, df, stat, R, n).P
    Rt = _as_resels(R)
    if S is not None and c == 1 and k == 0 and not (Rt.size == 1 and Rt[0] == 1):
        bonf = min(1.0, float(S) * float(p_uncorrected(u, df, stat)) ** n)
        P = min(P, bonf)
    return float(P)


def threshold_fwe(alpha: float, df, stat: str, R, S: float | None = None, n: int = 1) -> float:
    """``spm_uc``: FWE-corrected height threshold at level ``alpha``.

    The RFT threshold (Newton iterations on E[EC] and then on P, as SPM) and,
    when ``S`` (voxels in the search volume) is given, the Bonferroni
    threshold; the lower of the two is returned.
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    u_rf = _uc_rf(alpha, df, stat, R, n)
    Rt = _as_resels(R)
    if S is None or (Rt.size == 1 and Rt[0] == 1):
        return u_rf
    u_bonf = float(height_threshold((alpha / float(S)) ** (1.0 / n), df, stat))
    return min(u_rf, u_bonf)


def _uc_rf(alpha: float, df, stat: str, R, n: int = 1) -> float:
    Rt = _as_resels(R)
    u = float(height_threshold((alpha / Rt.max()) ** (1.0 / n), df, stat))
    du = 1e-6
    for which in ("Ec", "P"):
        step = 1.0
        for _ in range(200):
            if abs(step) <= 1e-6:
                break
            p = getattr(p_rf(1, 0, u, df, stat, R, n), which)
            q = getattr(p_rf(1, 0, u + du, df, stat, R, n), which)
            step = (alpha - p) / ((q - p) / du)
            u = u + step
    return float(u)


# ---------------------------------------------------------------------------
# resel counts


def _in_mask(mask) -> np.ndarray:
    m = np.asarray(mask)
    if m.ndim == 2:
        m = m[:, :, None]
    if m.ndim != 3:
        raise ValueError(f"mask must be 2-D or 3-D, got shape {m.shape}")
    return np.isfinite(m) & (m != 0) if m.dtype.kind == "f" else (m != 0)


def resel_counts(mask, fwhm_vox) -> np.ndarray:
    """``spm_resels_vol``: resel counts [R0, R1, R2, R3] of a binary volume.

    A voxel is in the volume when its value is finite and non-zero.  Edge
    lengths run between voxel centres (Worsley et al. 1996).

    Parameters
    ----------
    mask : array (x, y, z)
    fwhm_vox : 3 floats
        Smoothness in voxels.
    """
    m = _in_mask(mask)
    f = np.asarray(fwhm_vox, dtype=float)
    if f.shape != (3,) or np.any(f <= 0):
        raise ValueError(f"fwhm_vox must be 3 positive numbers, got {fwhm_vox}")
    P = int(m.sum())
    ex = int((m[1:, :, :] & m[:-1, :, :]).sum())
    ey = int((m[:, 1:, :] & m[:, :-1, :]).sum())
    ez = int((m[:, :, 1:] & m[:, :, :-1]).sum())
    fxy = int((m[1:, 1:, :] & m[:-1, 1:, :] & m[1:, :-1, :] & m[:-1, :-1, :]).sum())
    fxz = int((m[1:, :, 1:] & m[:-1, :, 1:] & m[1:, :, :-1] & m[:-1, :, :-1]).sum())
    fyz = int((m[:, 1:, 1:] & m[:, :-1, 1:] & m[:, 1:, :-1] & m[:, :-1, :-1]).sum())
    cube = m[1:, 1:, 1:] & m[:-1, 1:, 1:] & m[1:, :-1, 1:] & m[1:, 1:, :-1]
    cube &= m[:-1, :-1, 1:] & m[:-1, 1:, :-1] & m[1:, :-1, :-1] & m[:-1, :-1, :-1]
    C = int(cube.sum())
    fx, fy, fz = f
    r0 = P - (ex + ey + ez) + (fxy + fxz + fyz) - C
    r1 = (ex - fxy - fxz + C) / fx + (ey - fxy - fyz + C) / fy + (ez - fxz - fyz + C) / fz
    r2 = (fxy - C) / (fx * fy) + (fxz - C) / (fx * fz) + (fyz - C) / (fy * fz)
    r3 = C / (fx * fy * fz)
    return np.array([r0, r1, r2, r3], dtype=float)


def _per_axis_extent(length_vox, fwhm_vox) -> np.ndarray:
    L = np.asarray(length_vox, dtype=float)
    f = np.asarray(fwhm_vox, dtype=float)
    with np.errstate(divide="ignore"):
        s = np.where(np.isinf(f), 0.0, L / f)
    return s


def sphere_resels(radius_mm: float, fwhm_vox, voxel_size_mm) -> np.ndarray:
    """Resel counts of a sphere (SPM's analytic SVC sphere).

    ``R = [1, 4s, 2 pi s^2, 4/3 pi s^3]`` with ``s`` the geometric mean over
    axes of radius / FWHM (both in voxels).  Axes with infinite FWHM reduce
    the shape to a disc or a line, as SPM does.
    """
    if radius_mm <= 0:
        raise ValueError(f"radius_mm must be positive, got {radius_mm}")
    vox = np.asarray(voxel_size_mm, dtype=float)
    s = _per_axis_extent(radius_mm / vox, fwhm_vox)
    pos = s[s > 0]
    if pos.size == 3:
        g = np.prod(pos) ** (1 / 3)
        return np.array([1.0, 4 * g, 2 * np.pi * g**2, 4 / 3 * np.pi * g**3])
    if pos.size == 2:
        g = np.sqrt(np.prod(pos))
        return np.array([1.0, np.pi * g, np.pi * g**2, 0.0])
    if pos.size == 1:
        return np.array([1.0, pos[0], 0.0, 0.0])
    return np.array([1.0, 0.0, 0.0, 0.0])


def box_resels(sides_mm, fwhm_vox, voxel_size_mm) -> np.ndarray:
    """Resel counts of a box with full side lengths ``sides_mm`` (SPM's analytic SVC box)."""
    sides = np.asarray(sides_mm, dtype=float)
    if sides.shape != (3,) or np.any(sides < 0):
        raise ValueError(f"sides_mm must be 3 non-negative lengths, got {sides_mm}")
    s = _per_axis_extent(sides / np.asarray(voxel_size_mm, dtype=float), fwhm_vox)
    s1, s2, s3 = s
    return np.array([1.0, s1 + s2 + s3, s1 * s2 + s2 * s3 + s1 * s3, s1 * s2 * s3])


# ---------------------------------------------------------------------------
# smoothness


