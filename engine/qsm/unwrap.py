"""Phase unwrapping and multi-echo combination."""

from __future__ import annotations

import numpy as np
import scipy.fft as sfft

from ferritin.cohort.dipole import GAMMA_HZ_PER_T

from .phasor import phasor

__all__ = ["laplacian_kernel", "laplacian_unwrap", "path_unwrap", "combine_echoes", "refine_frequency", "field_to_ppm"]


def laplacian_kernel(shape, voxel_size=(1.0, 1.0, 1.0)) -> np.ndarray:
    """Continuous ``-|2 pi k|^2`` form of the Laplacian on the FFT grid (unshifted)."""
    k = [sfft.fftfreq(int(n), d=float(v)) for n, v in zip(shape, voxel_size)]
    kx, ky, kz = np.meshgrid(*k, indexing="ij", sparse=True)
    return -(2 * np.pi) ** 2 * (kx**2 + ky**2 + kz**2)


def laplacian_unwrap(phase: np.ndarray, voxel_size=(1.0, 1.0, 1.0), pad: int = 8, workers=None) -> np.ndarray:
    """Laplacian-based phase unwrapping (Schofield & Zhu 2003; Li et al. 2011).

    ``unwrapped = lap^-1 [cos(phi) lap sin(phi) - sin(phi) lap cos(phi)]``,
    with the Laplacian in its continuous k-space form on a zero-padded grid.
    The result equals the true phase up to a harmonic function (smooth
    offsets are not recovered; background removal discards them anyway).
    """
    phase = np.asarray(phase, dtype=np.float64)
    if phase.ndim != 3:
        raise ValueError(f"phase must be 3-D, got shape {phase.shape}")
    pw = [(pad, pad)] * 3
    p = np.pad(phase, pw, mode="reflect") if pad else phase
    shape = p.shape
    lap = laplacian_kernel(shape, voxel_size)
    s, c = np.sin(p), np.cos(p)

    def L(x):
        return sfft.ifftn(lap * sfft.fftn(x, workers=workers), workers=workers).real

    rhs = c * L(s) - s * L(c)
    inv = np.zeros_like(lap)
    nz = lap != 0
    inv[nz] = 1.0 / lap[nz]
    out = sfft.ifftn(inv * sfft.fftn(rhs, workers=workers), workers=workers).real
    if pad:
        out = out[pad:-pad, pad:-pad, pad:-pad]
    return out


def path_unwrap(phase: np.ndarray, mask: np.ndarray | None = None, seed: int = 0) -> np.ndarray:
    """Exact (path-following, quality-guided) 3-D unwrapping with scikit-image.

    Unlike Laplacian unwrapping, the result differs from the wrapped phase by
    exact multiples of 2 pi inside the mask.
    """
    from skimage.restoration import unwrap_phase

    phase = np.asarray(phase, dtype=np.float64)
    if mask is not None:
        phase = np.ma.masked_array(phase, mask=~np.asarray(mask, bool))
    out = unwrap_phase(phase, rng=seed)
    return np.asarray(np.ma.filled(out, 0.0)) if np.ma.isMaskedArray(out) else out


def combine_echoes(phase: np.ndarray, magnitude: np.ndarray, echo_times, voxel_size=(1.0, 1.0, 1.0),
                   method: str = "laplacian-wls", mask: np.ndarray | None = None, unwrapper: str = "laplacian",
                   workers=None) -> np.ndarray:
    """Field map (rad/s) from multi-echo phase.

    Methods
    -------
    ``"phase-difference"``
        Magnitude-weighted mean of the complex echo-to-echo differences
        (``sum m_e+1 m_e exp(i (phi_e+1 - phi_e))``), unwrapped once with
        :func:`laplacian_unwrap` and divided by the echo spacing.  The
        receiver phase offset cancels exactly and the spatial phase gradient
        is that of one echo spacing, not of the last echo, so strong fields
        near air do not alias (needs equally spaced echoes).  The map is
        then refined with every echo (:func:`refine_frequency`) and unwrapped
        spatially once, by ``unwrapper="laplacian"`` or ``"path"`` (exact,
        within ``mask``).
    ``"laplacian-wls"`` (default)
        Unwrap every echo with :func:`laplacian_unwrap`, then fit
        ``phase_e = phi0 + omega * TE_e`` per voxel by least squares weighted
        with ``magnitude_e^2`` (the noise variance of the phase is
        ``sigma^2 / magnitude^2``).
    ``"laplacian-te"``
        TE-weighted combination of Laplacian-unwrapped echoes
        (``sum TE_e psi_e / sum TE_e^2``), no offset term.
    ``"path-wls"``
        Exact path-based unwrapping of every echo, then the weighted fit.
    ``"nonlinear"``
        Nonlinear least-squares fit of the complex signal
        ``S_e = |S_e| exp(i (phi0 + omega TE_e))`` per voxel (Gauss–Newton on
        the complex residuals, as MEDI's complex fit; Liu et al. 2013),
        started from the echo-difference estimate and run to convergence,
        then spatially unwrapped once like ``"phase-difference"``.  Needs
        equally spaced echoes.

    Returns
    -------
    ndarray (x, y, z): angular frequency offset in rad/s.
    """
    phase = np.asarray(phase)
    mag = np.asarray(magnitude)
    if not np.issubdtype(phase.dtype, np.floating) or not np.issubdtype(mag.dtype, np.floating):
        phase, mag = phase.astype(np.float64), mag.astype(np.float64)
    te = np.asarray(echo_times, dtype=np.float64)
    if phase.ndim != 4 or phase.shape != mag.shape:
        raise ValueError(f"phase and magnitude must both be (echo, x, y, z); got {phase.shape} and {mag.shape}")
    if te.shape != (phase.shape[0],) or np.any(te <= 0):
        raise ValueError(f"need one positive echo time per echo, got {te.tolist()}")
    if method in ("phase-difference", "nonlinear"):
        if len(te) < 2:
            raise ValueError(f"the {method} combination needs at least 2 echoes")
        steps = np.diff(te)
        if not np.allclose(steps, steps[0], rtol=1e-3):
            raise ValueError(f"the phase-difference combination needs equally spaced echoes, got {te.tolist()}")
        # in the images' own precision (single for the study's float32 images): a sum of eleven
        # products keeps far more digits than the phase's noise
        z = np.zeros(phase.shape[1:], dtype=np.result_type(phase.dtype, mag.dtype, np.complex64))
        step, weight, term = np.empty(z.shape, phase.dtype), np.empty(z.shape, mag.dtype), np.empty_like(z)
        for e in range(len(te) - 1):  # echo by echo, in buffers reused for each: a few volumes of memory
            np.subtract(phase[e + 1], phase[e], out=step)
            z += phasor(step, np.multiply(mag[e + 1], mag[e], out=weight), out=term)
        dte = steps[0]
        # Per voxel, the echo-difference frequency is right modulo 2 pi / dte;
        # refining it with every echo keeps that ambiguity but averages the
        # noise over the whole echo train.  One spatial unwrap then resolves
        # the 2 pi / dte ambiguity.
        if method == "nonlinear":
            omega_w = nonlinear_frequency_fit(phase, mag, te, np.angle(z) / dte)
        else:
            omega_w = refine_frequency(phase, mag, te, np.angle(z) / dte)
        wrapped = _wrap(omega_w * dte)
        if unwrapper == "path":
            return path_unwrap(wrapped, mask) / dte
        return laplacian_unwrap(wrapped, voxel_size, workers=workers) / dte
    if method.startswith("laplacian"):
        psi = np.stack([laplacian_unwrap(p, voxel_size, workers=workers) for p in phase])
    elif method == "path-wls":
        psi = np.stack([path_unwrap(p, mask) for p in phase])
    else:
        raise ValueError(f"unknown echo-combination method {method!r}")
    if method == "laplacian-te":
        w = te[:, None, None, None]
        return (w * psi).sum(0) / (w**2).sum(0)
    if len(te) == 1:
        return psi[0] / te[0]
    w = mag**2 + 1e-12
    tt = te[:, None, None, None]
    sw = w.sum(0)
    st = (w * tt).sum(0)
    stt = (w * tt * tt).sum(0)
    sp = (w * psi).sum(0)
    stp = (w * tt * psi).sum(0)
    det = sw * stt - st**2
    return (sw * stp - st * sp) / np.where(det == 0, np.inf, det)


def refine_frequency(phase, magnitude, echo_times, omega0, iterations: int = 2):
    """Refine a frequency map with every echo (temporal unwrapping + weighted fit).

    The residual phase of each echo against the model ``phi0 + omega0 TE`` is
    wrapped into (-pi, pi] and fitted by magnitude²-weighted least squares
    ``r_e = a + delta TE_e``; ``omega0 + delta`` uses the whole echo train, so
    its noise is that of the whole echo range.  ``omega0`` must be right to
    within about pi / TE_max, or off by a multiple of 2 pi / delta-TE for
    equally spaced echoes (that ambiguity is kept, not resolved).
    """
    te = np.asarray(echo_times, dtype=np.float64)
    omega = np.array(omega0, dtype=np.float64)  # a copy: updated in place below
    # Single-precision phases are fitted in single precision (a residual of at most pi keeps
    # 3e-7 rad; the noise of a phase is ~1e-2 rad), the sums of weights and the update in double.
    single = np.asarray(phase[0]).dtype == np.float32 and np.asarray(magnitude[0]).dtype == np.float32
    real = np.float32 if single else np.float64
    # One echo at a time, in a few buffers reused for every echo: memory stays a few volumes whatever
    # the echo count (broadcasting over (echo, x, y, z) needed ~10 GiB at 256x256x150x12), and no
    # fresh volume is asked of the operating system per echo.
    w = np.empty(omega.shape, real)
    r = np.empty(omega.shape, real)
    turns = np.empty(omega.shape, real)
    signal = np.empty(omega.shape, np.result_type(real, np.complex64))

    def weight(e):  # magnitude squared: the inverse noise variance of the phase
        np.multiply(magnitude[e], magnitude[e], out=w, casting="same_kind")
        return np.add(w, real(1e-12), out=w)

    def residual(e, om, offset=None):  # phase - (offset +) omega TE, in r
        np.multiply(om, real(-te[e]), out=r)
        np.add(r, phase[e], out=r, casting="same_kind")
        if offset is not None:
            np.subtract(r, offset, out=r, casting="same_kind")
        return r

    sw = np.zeros(omega.shape)
    st = np.zeros(omega.shape)
    stt = np.zeros(omega.shape)
    for e, t in enumerate(te):
        sw += weight(e)
        w *= real(t)
        st += w
        w *= real(t)
        stt += w
    det = sw * stt - st**2
    del stt  # not needed in the loop: one volume less held through it
    det[det == 0] = np.inf
    step = np.empty(omega.shape)
    for _ in range(int(iterations)):
        om = omega.astype(real)
        acc = np.zeros(omega.shape, dtype=signal.dtype)
        for e in range(len(te)):
            acc += phasor(residual(e, om), weight(e), out=signal)
        phi0 = np.angle(acc)
        sr = np.zeros(omega.shape, real)
        str_ = np.zeros(omega.shape, real)
        for e, t in enumerate(te):
            _wrap(residual(e, om, phi0), scratch=turns)
            r *= weight(e)
            sr += r
            r *= real(t)
            str_ += r
        # omega += (sw * str_ - st * sr) / det
        np.multiply(sw, str_, out=step)
        step -= np.multiply(st, sr, dtype=np.float64)
        step /= det
        omega += step
    return omega


def _wrap(angle: np.ndarray, scratch: np.ndarray | None = None) -> np.ndarray:
    """``angle`` wrapped into [-pi, pi] (in place; ``scratch``, an array like it, spares an allocation)."""
    turns = np.multiply(angle, 1 / (2 * np.pi), out=scratch)
    np.rint(turns, out=turns)
    turns *= 2 * np.pi
    angle -= turns
    return angle


def nonlinear_frequency_fit(phase, magnitude, echo_times, omega0, max_iterations: int = 20, tol: float = 1e-6):
    """Per-voxel nonlinear least-squares fit of ``phi0`` and ``omega`` to the complex echoes.

    Minimises ``sum_e |S_e - |S_e| exp(i (phi0 + omega TE_e))|^2`` by
    Gauss–Newton.  With ``r_e = theta_e - phi0 - omega TE_e`` the residual's
    derivative gives the normal equations of a weighted fit of ``sin r_e`` with
    weights ``|S_e|^2`` (the linearisation of the complex residual), so the
    update is exact at convergence and robust to wrapped residuals, unlike a
    fit of the wrapped phase itself.  Iterates until the largest frequency
    update is below ``tol`` (rad/s) or ``max_iterations``.
    """
    phase = np.asarray(phase, dtype=np.float64)
    w = np.asarray(magnitude, dtype=np.float64) ** 2 + 1e-12
    te = np.asarray(echo_times, dtype=np.float64)[:, None, None, None]
    omega = np.array(omega0, dtype=np.float64)
    phi0 = np.angle((w * np.exp(1j * (phase - omega[None] * te))).sum(0))
    sw = w.sum(0)
    st = (w * te).sum(0)
    stt = (w * te * te).sum(0)
    for _ in range(int(max_iterations)):
        r = phase - phi0[None] - omega[None] * te
        s, c = np.sin(r), np.cos(r)
        # J'WJ with the curvature cos r (exact Gauss-Newton for the complex residual)
        a11 = (w * c).sum(0)
        a12 = (w * c * te).sum(0)
        a22 = (w * c * te * te).sum(0)
        b1 = (w * s).sum(0)
        b2 = (w * s * te).sum(0)
        det = a11 * a22 - a12**2
        # where the curvature is not positive (far from the optimum) fall back
        # to the wrapped-phase step with unit curvature
        bad = (a11 <= 0) | (det <= 1e-12 * np.maximum(sw * stt, 1e-300))
        det_fb = np.where(sw * stt - st**2 == 0, np.inf, sw * stt - st**2)
        d_phi = np.where(bad, (stt * b1 - st * b2) / det_fb, (a22 * b1 - a12 * b2) / np.where(bad, 1, det))
        d_om = np.where(bad, (sw * b2 - st * b1) / det_fb, (a11 * b2 - a12 * b1) / np.where(bad, 1, det))
        phi0 = phi0 + d_phi
        omega = omega + d_om
        if np.nanmax(np.abs(d_om)) < tol:
            break
    return omega


def field_to_ppm(omega_rad_s: np.ndarray, b0_tesla: float) -> np.ndarray:
    """Angular frequency (rad/s) to field perturbation in ppm of B0."""
    if b0_tesla <= 0:
        raise ValueError(f"B0 must be positive, got {b0_tesla}")
    return np.asarray(omega_rad_s) / (2 * np.pi * GAMMA_HZ_PER_T * b0_tesla) * 1e6
