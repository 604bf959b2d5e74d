"""Permutation inference for a T contrast: max-T FWE with Freedman–Lane.

Nuisance regressors (TIV, age, ...) make raw data not exchangeable; the
Freedman–Lane procedure permutes the residuals of the nuisance-only model
and adds them back to its fitted values (Freedman & Lane 1983; Winkler et
al. 2014, NeuroImage 92:381).  All permutations of a voxel block are
evaluated together with two matrix products:

* numerator: ``c' pinv(X) P e_z = (P' a)' e_z`` with ``a = pinv(X)' c``;
* residual sum of squares: ``||P e_z||^2 - ||Q' P e_z||^2`` with ``Q`` an
  orthonormal basis of X, and ``||P e_z|| = ||e_z||``.

The permutations are drawn once from the seed, so results are the same for
any chunking and any number of workers; the first permutation is the
identity (the observed statistic is part of its own null distribution).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.linalg import null_space

__all__ = ["PermutationResult", "permutation_max_t", "freedman_lane_t"]


@dataclass
class PermutationResult:
    t_obs: np.ndarray  # (x, y, z) or (V,)
    max_null: np.ndarray  # (n_perm,) maximum T over the mask per permutation
    p_fwe: np.ndarray  # voxelwise FWE-corrected p
    n_perm: int


def _permutations(n: int, n_perm: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    perms = np.empty((n_perm, n), dtype=np.intp)
    perms[0] = np.arange(n)
    for i in range(1, n_perm):
        perms[i] = rng.permutation(n)
    return perms


def freedman_lane_t(Y: np.ndarray, X: np.ndarray, c: np.ndarray, perms: np.ndarray) -> np.ndarray:
    """T statistics of contrast ``c`` for every permutation (rows) and voxel (columns).

    Parameters
    ----------
    Y : (n, V) data
    X : (n, p) full design
    c : (p,) contrast
    perms : (B, n) permutations of the rows
    """
    Y = np.asarray(Y, dtype=np.float64)
    X = np.asarray(X, dtype=np.float64)
    c = np.asarray(c, dtype=np.float64).ravel()
    n, p = X.shape
    df = n - np.linalg.matrix_rank(X)
    Z = X @ null_space(c[None, :])  # nuisance part of the design
    if Z.shape[1]:
        Hz_resid = Y - Z @ np.linalg.lstsq(Z, Y, rcond=None)[0]
    else:
        Hz_resid = Y
    a = np.linalg.pinv(X).T @ c  # (n,)
    Q, _ = np.linalg.qr(X)
    var_c = float(c @ np.linalg.inv(X.T @ X) @ c)
    ez = Hz_resid
    ss_total = (ez * ez).sum(axis=0)  # ||P e_z||^2 = ||e_z||^2
    # Fitted nuisance values are in span(X), so they add c'pinv(X) Yz_hat to the
    # numerator and nothing to the residuals.
    fitted = Y - ez
    num0 = a @ fitted  # (V,)
    # Y* = e_z[perm] + fitted, so a' Y* = sum_i a_i e_z[perm_i] = (a[inv])' e_z
    # with inv the inverse permutation; likewise for Q.
    inv = np.argsort(perms, axis=1)
    A = a[inv]  # (B, n)
    num = A @ ez + num0[None, :]
    QP = Q[inv]  # (B, n, p)
    B = QP.shape[0]
    proj = (QP.transpose(0, 2, 1).reshape(B * p, n) @ ez).reshape(B, p, -1)  # one BLAS product
    rss = ss_total[None, :] - (proj * proj).sum(axis=1)
    rss = np.maximum(rss, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return num / np.sqrt(rss / df * var_c)


def permutation_max_t(Y, X, c, mask=None, n_perm: int = 1000, seed: int = 0, block_voxels: int = 20000,
                      batch: int = 250) -> PermutationResult:
    """Max-T permutation FWE for a T contrast over voxels.

    Parameters
    ----------
    Y : array (n, x, y, z) or (n, V), numpy or dask
    X : (n, p) design; c : (p,) contrast
    mask : boolean image (x, y, z); voxels outside are ignored
    n_perm : number of permutations including the identity
    seed : permutations are drawn from this seed only
    block_voxels : voxels per block (memory: n * block_voxels * 8 bytes, times batch * p for the products)
    batch : permutations evaluated together
    """
    X = np.asarray(X, dtype=np.float64)
    n = X.shape[0]
    if Y.shape[0] != n:
        raise ValueError(f"Y has {Y.shape[0]} subjects but X has {n} rows")
    if n_perm < 2:
        raise ValueError("n_perm must be at least 2 (the identity and one permutation)")
    spatial = Y.shape[1:]
    if mask is None:
        mask = np.ones(spatial, bool)
    mask = np.asarray(mask, bool)
    idx = np.flatnonzero(mask.ravel())
    perms = _permutations(n, n_perm, seed)
    flat = Y.reshape(n, -1)
    max_null = np.full(n_perm, -np.inf)
    t_obs = np.full(idx.size, np.nan)
    for start in range(0, idx.size, block_voxels):
        sel = idx[start : start + block_voxels]
        block = np.asarray(flat[:, sel] if not hasattr(flat, "dask") else flat[:, sel].compute(), dtype=np.float64)
        for b0 in range(0, n_perm, batch):
            T = freedman_lane_t(block, X, c, perms[b0 : b0 + batch])
            T = np.where(np.isfinite(T), T, -np.inf)
            max_null[b0 : b0 + batch] = np.maximum(max_null[b0 : b0 + batch], T.max(axis=1))
            if b0 == 0:
                t_obs[start : start + sel.size] = T[0]
    # p_FWE = (#{perm: max >= t} ) / n_perm, identity included
    sorted_max = np.sort(max_null)
    counts = n_perm - np.searchsorted(sorted_max, t_obs, side="left")
    p = counts / n_perm
    t_img = np.full(mask.size, np.nan)
    t_img[idx] = t_obs
    p_img = np.full(mask.size, np.nan)
    p_img[idx] = p
    return PermutationResult(t_img.reshape(spatial), max_null, p_img.reshape(spatial), n_perm)
