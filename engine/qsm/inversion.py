"""Dipole inversion: local field (ppm) to susceptibility (ppm)."""

from __future__ import annotations

import numpy as np
import scipy.fft as sfft

from ferritin.cohort.dipole import dipole_kernel, even_dipole_kernel

__all__ = ["tkd", "tv_admm", "star_qsm", "ilsqr", "reference_to_mean"]


def _check(local_field, mask):
    f = np.asarray(local_field, dtype=np.float64)
    m = np.asarray(mask, dtype=bool)
    if f.ndim != 3 or f.shape != m.shape:
        raise ValueError(f"local field {f.shape} and mask {m.shape} must be the same 3-D shape")
    if not m.any():
        raise ValueError("mask is empty")
    return f, m


def _pad(x, pad):
    """``x`` with at least ``pad`` zeros on every side, grown at the far ends to lengths the FFT is fast at
    (a prime length costs several times a 5-smooth one)."""
    fast = [sfft.next_fast_len(n + 2 * pad, real=True) for n in x.shape]
    return np.pad(x, [(pad, m - n - pad) for n, m in zip(x.shape, fast)])


def _crop(x, pad, shape):
    """The part of a :func:`_pad`-ed array that holds the original ``shape``."""
    return x[tuple(slice(pad, pad + n) for n in shape)]


def reference_to_mean(chi: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Subtract the mean over the mask (susceptibility is relative)."""
    chi = np.where(mask, chi, 0.0)
    return np.where(mask, chi - chi[mask].mean(), 0.0)


def tkd(local_field, mask, voxel_size=(1.0, 1.0, 1.0), b0_dir=(0.0, 0.0, 1.0), threshold: float = 0.15,
        pad: int = 16, workers=None) -> np.ndarray:
    """Truncated k-space division (Shmueli et al. 2009; Wharton et al. 2010).

    ``chi = ifft(F / D)`` with ``1/D`` replaced by ``sign(D)/threshold`` where
    ``|D| < threshold``; the systematic underestimate of truncation is
    corrected by rescaling with the kernel's mean response.
    """
    f, m = _check(local_field, mask)
    fp = _pad(f * m, pad)
    D = dipole_kernel(fp.shape, voxel_size, b0_dir)
    inv = np.where(np.abs(D) >= threshold, 1.0 / np.where(D == 0, 1, D), np.sign(D) / threshold)
    inv[0, 0, 0] = 0.0
    chi = sfft.ifftn(inv * sfft.fftn(fp, workers=workers), workers=workers).real
    chi = _crop(chi, pad, f.shape)
    # correction for the truncated region (Schweser et al. 2013): mean of D / D_truncated
    scale = float(np.mean(D * inv)) if np.mean(D * inv) > 0 else 1.0
    return reference_to_mean(chi / scale, m)


def _edges(axis: int):
    """Index tuples along ``axis``: all but the last, all but the first, the last, the first."""
    def at(sl):
        index = [slice(None)] * 3
        index[axis] = sl
        return tuple(index)
    return at(slice(0, -1)), at(slice(1, None)), at(slice(-1, None)), at(slice(0, 1))


def _grad(x, vs, out=None):
    """Forward differences along each axis (periodic), per mm: (3, *x.shape)."""
    out = np.empty((3, *x.shape), dtype=np.result_type(x, float)) if out is None else out
    for a in range(3):
        head, tail, last, first = _edges(a)
        np.subtract(x[tail], x[head], out=out[a][head])
        np.subtract(x[first], x[last], out=out[a][last])
        if vs[a] != 1.0:  # a pass over the array saved at 1 mm
            out[a] /= vs[a]
    return out


def _div(g, vs):
    return sum((g[a] - np.roll(g[a], 1, axis=a)) / vs[a] for a in range(3))


def _neg_div(g, vs, out, tmp=None):
    """``-_div(g, vs)`` written into ``out`` (backward differences, the adjoint of :func:`_grad`).

    ``tmp``, an array like ``out``, is used as scratch space (allocated when not given).
    """
    tmp = np.empty_like(out) if tmp is None else tmp
    for a in range(3):
        head, tail, last, first = _edges(a)
        part = out if a == 0 else tmp
        np.subtract(g[a][head], g[a][tail], out=part[tail])
        np.subtract(g[a][last], g[a][first], out=part[first])
        if vs[a] != 1.0:
            part /= vs[a]
        if a:
            out += part
    return out


def tv_admm(local_field, mask, voxel_size=(1.0, 1.0, 1.0), b0_dir=(0.0, 0.0, 1.0), lam: float = 1e-4,
            rho: float | None = None, mu: float = 1.0, weight: np.ndarray | None = None, iterations: int = 20,
            tol: float = 1e-3, pad: int = 8, relaxation: float = 1.5, workers=None) -> np.ndarray:
    """Total-variation regularised dipole inversion by ADMM (Bilgic et al. 2014; Milovic et al. 2018).

    Solves ``min_chi 1/2 ||W (D chi - f)||^2 + lam ||grad chi||_1`` where
    ``W`` is the mask (times ``weight``, e.g. a magnitude-based reliability):
    the field is fitted only where it was measured.  Fitting a zero field
    outside the mask instead (the unweighted closed form) pulls chi towards
    sources whose field vanishes there and costs deep-grey contrast (0.014 vs
    0.009 ppm mean error behind V-SHARP on simulated heads).  With the
    splittings ``z = grad chi`` and ``y = D chi`` every sub-problem is either
    diagonal in k-space or voxelwise, so an iteration costs four real-input
    FFTs (the kernel's even part, :func:`even_dipole_kernel`, keeps every image real).
    ``lam`` is relative to a field in ppm and gradients per mm.

    The iterations are over-relaxed (Eckstein & Bertsekas 1992; Boyd et al.
    2011, section 3.4.3): the splittings' updates see ``relaxation`` times the
    new ``grad chi`` and ``D chi`` plus ``1 - relaxation`` times the previous
    ``z`` and ``y``.  ADMM on this problem approaches its solution slowly and
    the chain stops it early; relaxation and a stiffer gradient penalty reach
    the accuracy of 50 plain iterations in 20 (``docs/validation.md``).

    Parameters
    ----------
    local_field : array (x, y, z), ppm
    mask : array of bool
    voxel_size : 3 floats (mm)
    b0_dir : 3 floats
        Unit B0 direction in voxel coordinates (see :func:`ferritin.cohort.dipole.b0_direction`).
    lam : float
        TV weight.
    rho, mu : float
        ADMM penalties of the gradient and the field splitting (default ``rho = 300 lam``).
    relaxation : float
        Over-relaxation factor in (0, 2); 1 is plain ADMM.
    weight : array, optional
        Data weights in [0, 1] inside the mask.
    iterations, tol
        At most ``iterations``; stop when chi changes by less than ``tol`` (relative).
    pad : int
        Zeros around the field (voxels) against the FFT's wrap-around.  The field is fitted
        only inside the mask and is free outside it, so a narrow margin suffices; the
        iterations' cost grows with the padded grid (``docs/validation.md``).
    """
    f, m = _check(local_field, mask)
    vs = np.asarray(voxel_size, dtype=float)
    if weight is not None:
        weight = np.asarray(weight, dtype=np.float64)
        if weight.shape != m.shape:
            raise ValueError(f"weight {weight.shape} must have the mask's shape {m.shape}")
        if not np.isfinite(weight).all() or weight.min() < 0:
            raise ValueError("weight must be finite and non-negative")
    if lam <= 0 or mu <= 0:
        raise ValueError(f"lam and mu must be positive, got {lam}, {mu}")
    if not 0 < relaxation < 2:
        raise ValueError(f"relaxation must be in (0, 2), got {relaxation}")
    # Single precision: the iterations' FFTs and updates move half the bytes, and a field in ppm
    # needs nowhere near float64's digits (relative rounding 6e-8 of an estimate whose error is ~20 %).
    real = np.float32
    fp = _pad(f * m, pad).astype(real)
    W2 = (_pad(m * (1.0 if weight is None else weight), pad) ** 2).astype(real)
    shape = fp.shape
    # every image here is real: real-input FFTs on the half spectrum, with the even kernel
    D = even_dipole_kernel(shape, vs, b0_dir)[..., : shape[-1] // 2 + 1].astype(real)
    rho = 300 * lam if rho is None else rho
    k = [sfft.fftfreq(n) for n in shape[:-1]] + [sfft.rfftfreq(shape[-1])]
    # |FFT of forward difference|^2 summed over axes
    E2 = sum(
        np.abs(1 - np.exp(2j * np.pi * kk)) ** 2 / vs[a] ** 2
        for a, kk in enumerate(np.meshgrid(*k, indexing="ij", sparse=True))
    )
    denom = mu * D.astype(float) ** 2 + rho * E2
    denom[0, 0, 0] = 1.0
    muD_over = (mu * D / denom).astype(real)  # the chi update's two k-space weights, formed once
    rho_over = (rho / denom).astype(real)
    z = np.zeros((3, *shape), real)
    u = np.zeros((3, *shape), real)
    y = fp.copy()
    u2 = np.zeros(shape, real)
    W2f = W2 * fp
    W2mu = W2 + real(mu)
    chi = np.zeros(shape, real)
    work = np.empty(shape, real)
    scratch = np.empty(shape, real)  # allocated once: a fresh array every iteration costs page faults
    t = real(lam / rho)  # the soft threshold
    a = real(relaxation)
    aD = D * a  # D chi comes out of the inverse transform already relaxed
    grad = np.empty_like(z)
    product = np.empty(D.shape, np.result_type(real, np.complex64))  # a half spectrum, like the kernel
    for _ in range(int(iterations)):
        zmu = np.subtract(z, u, out=grad)  # the gradient's buffer is free until the gradient below
        spectrum = sfft.rfftn(np.subtract(y, u2, out=work), workers=workers)
        spectrum *= muD_over
        spectrum += np.multiply(rho_over, sfft.rfftn(_neg_div(zmu, vs, out=work, tmp=scratch), workers=workers),
                                out=product)
        new = sfft.irfftn(spectrum, s=shape, workers=workers)
        change = np.linalg.norm(np.subtract(new, chi, out=chi)) / max(np.linalg.norm(new), 1e-12)
        chi = new
        # v = a grad chi + (1 - a) z + u, the gradient taken of a chi (one volume to scale, not three)
        v = _grad(np.multiply(chi, a, out=work) if a != 1 else chi, vs, out=grad)
        if a != 1:
            v += np.multiply(z, 1 - a, out=z)
        v += u
        # soft threshold: u = v - z is v clipped to [-t, t], z = v - u
        np.clip(v, -t, t, out=u)
        np.subtract(v, u, out=z)
        # D chi from chi's own spectrum: the half spectrum above is Hermitian, so transforming chi
        # back would only return it again (to rounding)
        spectrum *= aD
        v2 = sfft.irfftn(spectrum, s=shape, workers=workers)
        if a != 1:
            v2 += np.multiply(y, 1 - a, out=work)
        v2 += u2
        np.multiply(v2, real(mu), out=y)
        y += W2f
        y /= W2mu  # field where measured, free elsewhere
        np.subtract(v2, y, out=u2)
        if change < tol:
            break
    chi = _crop(chi, pad, f.shape)
    return reference_to_mean(chi, m)


def _forward(chi_padded: np.ndarray, D: np.ndarray, workers=None) -> np.ndarray:
    return sfft.ifftn(D * sfft.fftn(chi_padded, workers=workers), workers=workers).real


def star_qsm(local_field, mask, voxel_size=(1.0, 1.0, 1.0), b0_dir=(0.0, 0.0, 1.0), lam_large: float = 3e-3,
             lam_small: float = 1e-4, iterations: int = 50, pad: int = 16, workers=None) -> np.ndarray:
    """Two-level sparse inversion in the manner of STAR-QSM (Wei et al. 2015).

    Streaking comes mostly from large susceptibility sources (veins, bleeds,
    iron-rich nuclei) whose field is fitted with too little regularisation.
    STAR-QSM therefore solves twice: first with strong sparsity
    (``lam_large``), which recovers the large sources without streaks; then
    the field those sources explain is removed and the small susceptibility
    contrasts are recovered from the residual with weak sparsity
    (``lam_small``); ``chi = chi_large + chi_small``.  Both levels are
    TV-regularised ADMM solves (:func:`tv_admm`).
    """
    f, m = _check(local_field, mask)
    vs = np.asarray(voxel_size, dtype=float)
    large = tv_admm(f, m, vs, b0_dir, lam=lam_large, iterations=iterations, pad=pad, workers=workers)
    fp = _pad(np.where(m, large, 0.0), pad)
    D = dipole_kernel(fp.shape, vs, b0_dir)
    explained = _forward(fp, D, workers)
    explained = _crop(explained, pad, f.shape)
    residual = np.where(m, f - explained, 0.0)
    small = tv_admm(residual, m, vs, b0_dir, lam=lam_small, iterations=iterations, pad=pad, workers=workers)
    return reference_to_mean(large + small, m)


def ilsqr(local_field, mask, voxel_size=(1.0, 1.0, 1.0), b0_dir=(0.0, 0.0, 1.0), tol: float = 0.01,
          max_iterations: int = 30, cone_threshold: float = 0.1, edge_percentile: float = 70.0, pad: int = 16,
          workers=None) -> np.ndarray:
    """iLSQR-class inversion (Li et al. 2015): LSQR, then streaks estimated in the cone and removed.

    1. ``chi0``: LSQR (Paige & Saunders) of ``min ||M (D chi - f)||`` with early
       stopping at relative residual ``tol`` — fast, accurate in the
       well-conditioned part of k-space, streaky in the cone ``|D| < cone_threshold``.
    2. Streaking artefacts live in the cone: find ``s = P_cone s`` whose
       gradient matches that of ``chi0`` wherever the image should be smooth
       (brain voxels whose gradient magnitude is below ``edge_percentile``),
       by LSQR as well.
    3. ``chi = chi0 - s``, referenced to the mean over the mask.
    """
    from scipy.sparse.linalg import LinearOperator, lsqr

    f, m = _check(local_field, mask)
    vs = np.asarray(voxel_size, dtype=float)
    fp = _pad(f * m, pad)
    mp = _pad(m.astype(np.float64), pad)
    shape = fp.shape
    N = fp.size
    D = dipole_kernel(shape, vs, b0_dir)

    def A(x):  # M F^-1 D F x ; D real and even, so A' = F^-1 D F M
        return (mp * _forward(x.reshape(shape), D, workers)).ravel()

    def At(y):
        return _forward(mp * y.reshape(shape), D, workers).ravel()

    op = LinearOperator((N, N), matvec=A, rmatvec=At, dtype=np.float64)
    chi0 = lsqr(op, (mp * fp).ravel(), atol=tol, btol=tol, iter_lim=max_iterations)[0].reshape(shape)
    # streaks: cone-limited component with the gradients of chi0 in smooth regions
    cone = (np.abs(D) < cone_threshold).astype(np.float64)
    g0 = _grad(chi0, vs)
    gmag = np.sqrt((g0**2).sum(0))
    inside = mp > 0
    smooth = (inside & (gmag <= np.percentile(gmag[inside], edge_percentile))).astype(np.float64)

    def P(x):
        return sfft.ifftn(cone * sfft.fftn(x, workers=workers), workers=workers).real

    def B(x):
        return (smooth[None] * _grad(P(x.reshape(shape)), vs)).ravel()

    def Bt(y):
        return P(-_div(smooth[None] * y.reshape((3, *shape)), vs)).ravel()

    op2 = LinearOperator((3 * N, N), matvec=B, rmatvec=Bt, dtype=np.float64)
    s = lsqr(op2, (smooth[None] * g0).ravel(), atol=tol, btol=tol, iter_lim=max_iterations)[0].reshape(shape)
    chi = chi0 - P(s)
    chi = _crop(chi, pad, f.shape)
    return reference_to_mean(chi, m)
