"""Voxelwise ordinary least squares over stacked (subject, x, y, z) arrays.

The fit is blockwise over voxel chunks of a dask array: every block holds all
subjects for a block of voxels, so memory is bounded by the chunk size, not by
the cohort.  NumPy arrays are accepted too and treated as one block.
"""

from __future__ import annotations

from dataclasses import dataclass

import dask
import dask.array as da
import numpy as np

__all__ = ["GLMFit", "fit_glm", "t_contrast", "f_contrast", "standardized_residuals"]


@dataclass
class GLMFit:
    """Lazy results of :func:`fit_glm`.

    ``beta`` (p, x, y, z), ``sigma2`` (x, y, z) residual variance,
    ``df`` error degrees of freedom; ``Y`` and ``X`` are kept for residuals.
    """

    beta: da.Array
    sigma2: da.Array
    df: int
    X: np.ndarray
    pinv: np.ndarray
    Y: da.Array
    mask: da.Array | None

    def persist(self) -> GLMFit:
        """Compute the parameter maps once (p + 1 volumes) and keep them.

        Residual images and contrasts are then cheap; without it, every
        residual image taken one at a time would refit the model.
        """
        # Kept where they were computed (a cluster's workers): gathered into this
        # process and sent back inside the next graphs, they made graphs of
        # p + 1 volumes (hundreds of MiB at 1 mm).
        beta, sigma2 = dask.persist(self.beta, self.sigma2)
        return GLMFit(beta, sigma2, self.df, self.X, self.pinv, self.Y, self.mask)


def _as_dask(Y) -> da.Array:
    Y = Y if isinstance(Y, da.Array) else da.from_array(np.asarray(Y), chunks=(-1, "auto", "auto", "auto"))
    if Y.ndim != 4:
        raise ValueError(f"Y must be (subject, x, y, z), got {Y.ndim} dimensions")
    if Y.numblocks[0] != 1:
        Y = Y.rechunk({0: -1})
    return Y


def _combine(weights: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``weights @ rows`` accumulated in a fixed order, one row at a time.

    BLAS blocks a matrix product differently for different widths, so the
    last bit of a voxel's result would depend on the chunk it sits in.
    Accumulating row by row makes every voxel's value independent of the
    chunking (and of the number of workers).
    """
    out = np.zeros((weights.shape[0], rows.shape[1]))
    for i in range(rows.shape[0]):
        out += weights[:, i : i + 1] * rows[i]
    return out


def _fit_block(y, inside, pinv, X, df):
    """Parameters and residual variance of one voxel block, computed at the voxels inside the mask only.

    Every voxel's arithmetic is elementwise, so leaving the others out changes
    no bit of the rest; they are NaN.
    """
    n = y.shape[0]
    keep = inside.reshape(-1)
    flat = y.reshape(n, -1)[:, keep].astype(np.float64)
    b = _combine(pinv, flat)
    r = flat - _combine(X, b)
    s2 = np.zeros(flat.shape[1])
    for i in range(n):
        s2 += r[i] * r[i]
    s2 /= df
    out = np.full((b.shape[0] + 1, keep.size), np.nan)
    out[:, keep] = np.concatenate([b, s2[None]], axis=0)
    return out.reshape((b.shape[0] + 1, *y.shape[1:]))


def _residual_block(y, beta, sigma2, inside, X):
    """Standardised residuals of one voxel block (the chosen scans), NaN outside the mask."""
    keep = inside.reshape(-1)
    n, p = X.shape
    flat = y.reshape(n, -1)[:, keep].astype(np.float64)
    fitted = _combine(X, beta.reshape(p, -1)[:, keep])
    out = np.full((n, keep.size), np.nan)
    out[:, keep] = (flat - fitted) / np.sqrt(sigma2.reshape(-1)[keep])
    return out.reshape((n, *y.shape[1:]))


def fit_glm(Y, X, mask=None) -> GLMFit:
    """Fit ``Y = X beta + e`` at every voxel.

    Parameters
    ----------
    Y : array (subject, x, y, z), numpy or dask
        Stacked images; chunks along voxels are kept, the subject axis is
        made one chunk.
    X : array (subject, p)
        Design matrix (full column rank).
    mask : array (x, y, z) of bool, optional
        Voxels outside are NaN in every result.

    Returns
    -------
    GLMFit (lazy)
    """
    X = np.asarray(X, dtype=np.float64)
    Y = _as_dask(Y)
    if X.ndim != 2 or X.shape[0] != Y.shape[0]:
        raise ValueError(f"X must be (subjects, regressors) with {Y.shape[0]} rows, got {X.shape}")
    rank = np.linalg.matrix_rank(X)
    if rank < X.shape[1]:
        raise ValueError(f"design matrix is rank deficient (rank {rank} < {X.shape[1]})")
    df = X.shape[0] - rank
    if df < 1:
        raise ValueError("no error degrees of freedom: more regressors than subjects")
    pinv = np.linalg.pinv(X)
    p = X.shape[1]
    m = None
    if mask is not None:
        m = da.asarray(np.asarray(mask, dtype=bool)) if not isinstance(mask, da.Array) else mask.astype(bool)
        if m.shape != Y.shape[1:]:
            raise ValueError(f"mask shape {m.shape} differs from image shape {Y.shape[1:]}")
        m = m.rechunk(Y.chunks[1:])
    inside = m if m is not None else da.ones(Y.shape[1:], dtype=bool, chunks=Y.chunks[1:])
    out = da.map_blocks(_fit_block, Y, inside[None], pinv, X, df, dtype=np.float64,
                        chunks=((p + 1,), *Y.chunks[1:]), token="ferritin-glm")
    return GLMFit(out[:p], out[p], df, X, pinv, Y, m)


def t_contrast(fit: GLMFit, c) -> da.Array:
    """T statistic map of contrast vector ``c``."""
    c = np.asarray(c, dtype=np.float64).ravel()
    if c.size != fit.X.shape[1]:
        raise ValueError(f"contrast has {c.size} weights for {fit.X.shape[1]} regressors")
    xtx_inv = np.linalg.inv(fit.X.T @ fit.X)
    var_c = float(c @ xtx_inv @ c)
    effect = da.tensordot(c, fit.beta, axes=(0, 0))
    with np.errstate(divide="ignore", invalid="ignore"):
        return effect / da.sqrt(fit.sigma2 * var_c)


def f_contrast(fit: GLMFit, C) -> da.Array:
    """F statistic map of contrast matrix ``C`` (q, p)."""
    C = np.atleast_2d(np.asarray(C, dtype=np.float64))
    if C.shape[1] != fit.X.shape[1]:
        raise ValueError(f"contrast has {C.shape[1]} columns for {fit.X.shape[1]} regressors")
    q = np.linalg.matrix_rank(C)
    xtx_inv = np.linalg.inv(fit.X.T @ fit.X)
    M = np.linalg.pinv(C @ xtx_inv @ C.T)
    cb = da.tensordot(C, fit.beta, axes=(1, 0))  # (q, x, y, z)
    quad = da.einsum("i...,ij,j...->...", cb, M, cb)
    return quad / (q * fit.sigma2)


def residual_subset(n: int, max_images: int = 64) -> np.ndarray:
    """Which scans SPM keeps residual images of: all, or ``max_images`` evenly spaced
    (``spm_spm``: ``round(linspace(1, nScan, maxres))`` with ``stats.maxres = 64``)."""
    if n <= max_images:
        return np.arange(n)
    return np.round(np.linspace(0, n - 1, max_images)).astype(int)


def standardized_residuals(fit: GLMFit, max_images: int | None = 64) -> da.Array:
    """Residuals divided by the residual s.d. (SPM's ResI), NaN outside the mask.

    As SPM, at most ``max_images`` residual images (evenly spaced over the
    scans) are formed for the smoothness estimate; None keeps all.  Chunked
    like the data (all chosen scans per voxel block), so computing them reads
    the stack once; persist the fit first (:meth:`GLMFit.persist`) so that
    the parameters are not refitted.
    """
    n = fit.X.shape[0]
    idx = np.arange(n) if max_images is None else residual_subset(n, max_images)
    # all chosen scans of a voxel block at once: the stack is read once
    Ys = fit.Y[idx]
    inside = da.isfinite(fit.sigma2)  # NaN outside the mask (and where the data were)
    return da.map_blocks(_residual_block, Ys, fit.beta, fit.sigma2[None], inside[None], fit.X[idx],
                         dtype=np.float64, chunks=((len(idx),), *Ys.chunks[1:]), token="ferritin-resid")
