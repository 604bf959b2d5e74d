"""Permutation inference for a T contrast: max-T, cluster mass and TFCE, with Freedman–Lane.

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

Spatial statistics need whole images per permutation: :func:`permutation_cluster`
computes the T images of a batch of permutations at once and takes, per
permutation, the maximum T, the largest cluster mass (sum of T over an
18-connected cluster above the cluster-forming threshold, as FSL randomise's
``-C``) and the maximum TFCE (Smith & Nichols 2009; E = 0.5, H = 2, steps of
``dh``, 26-connectivity, one-sided, as fslmaths and nilearn).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import ndimage
from scipy.linalg import null_space

__all__ = ["PermutationResult", "ClusterPermutationResult", "permutation_max_t", "permutation_cluster",
           "freedman_lane_t", "tfce", "cluster_masses", "cluster_table", "cluster_p_map"]

_CONN18 = ndimage.generate_binary_structure(3, 2)
_CONN26 = ndimage.generate_binary_structure(3, 3)


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


def freedman_lane_t(Y: np.ndarray, X: np.ndarray, c: np.ndarray, perms: np.ndarray, dtype=np.float64) -> np.ndarray:
    """T statistics of contrast ``c`` for every permutation (rows) and voxel (columns).

    Parameters
    ----------
    Y : (n, V) data
    X : (n, p) full design
    c : (p,) contrast
    perms : (B, n) permutations of the rows
    dtype : precision of the two large matrix products (float32 halves their time;
        T is then accurate to ~1e-6 relative, far below what moves a p-value)
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
    A = a[inv].astype(dtype)  # (B, n)
    ez_d = ez.astype(dtype, copy=False)
    num = (A @ ez_d).astype(np.float64) + num0[None, :]
    QP = Q[inv]  # (B, n, p)
    B = QP.shape[0]
    proj = (QP.transpose(0, 2, 1).reshape(B * p, n).astype(dtype) @ ez_d).reshape(B, p, -1)  # one BLAS product
    rss = ss_total[None, :] - (proj * proj).sum(axis=1)
    rss = np.maximum(rss, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return num / np.sqrt(rss / df * var_c)


def _checked_design(Y, X, n_perm: int) -> tuple[np.ndarray, int]:
    X = np.asarray(X, dtype=np.float64)
    n = X.shape[0]
    if Y.shape[0] != n:
        raise ValueError(f"Y has {Y.shape[0]} subjects but X has {n} rows")
    if n_perm < 2:
        raise ValueError("n_perm must be at least 2 (the identity and one permutation)")
    return X, n


def permutation_max_t(Y, X, c, mask=None, n_perm: int = 1000, seed: int = 0, block_voxels: int = 20000,
                      batch: int = 250, dtype=np.float64) -> PermutationResult:
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
    dtype : precision of the permutation products (``np.float32``: about twice as fast)
    """
    X, n = _checked_design(Y, X, n_perm)
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
            T = freedman_lane_t(block, X, c, perms[b0 : b0 + batch], dtype=dtype)
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


def tfce(stat: np.ndarray, dh: float = 0.1, E: float = 0.5, H: float = 2.0, connectivity: int = 26,
         thresholds=None) -> np.ndarray:
    """Threshold-free cluster enhancement of the positive part of ``stat``.

    ``TFCE(v) = sum_h e(h)^E h^H`` over thresholds ``h = dh, 2 dh, … <= stat(v)``,
    with ``e(h)`` the size of the cluster containing ``v`` at threshold ``h``
    (not multiplied by ``dh``, as fslmaths and nilearn).  NaN counts as below
    every threshold.  ``thresholds`` (increasing) replaces the regular steps.
    """
    stat = np.asarray(stat, dtype=np.float64)
    if stat.ndim != 3:
        raise ValueError(f"stat must be a 3-D image, got shape {stat.shape}")
    if dh <= 0:
        raise ValueError(f"dh must be positive, got {dh}")
    structure = {26: _CONN26, 18: _CONN18, 6: ndimage.generate_binary_structure(3, 1)}.get(connectivity)
    if structure is None:
        raise ValueError(f"connectivity must be 6, 18 or 26, got {connectivity}")
    out = np.zeros(stat.shape)
    s = np.where(np.isfinite(stat), stat, 0.0)
    top = s.max() if s.size else 0.0
    steps = np.arange(dh, top + dh / 2, dh) if thresholds is None else np.asarray(thresholds, dtype=float)
    steps = steps[steps > 0]
    if not steps.size or top < steps[0]:
        return out
    # work inside the bounding box of the positive voxels: labelling dominates
    box = tuple(slice(a.min(), a.max() + 1) for a in np.nonzero(s >= steps[0]))
    sub = s[box]
    acc = np.zeros(sub.shape)
    lo = [0, 0, 0]
    hi = list(sub.shape)
    for h in steps:
        # the sets shrink as h rises: label inside their own bounding box
        view = tuple(slice(a, b) for a, b in zip(lo, hi))
        above = sub[view] >= h
        if not above.any():
            break
        for ax in range(3):
            hit = np.flatnonzero(above.any(axis=tuple(a for a in range(3) if a != ax)))
            lo[ax], hi[ax] = lo[ax] + hit[0], lo[ax] + hit[-1] + 1
        view = tuple(slice(a, b) for a, b in zip(lo, hi))
        above = sub[view] >= h
        lab, _ = ndimage.label(above, structure=structure)
        sizes = np.bincount(lab.ravel()).astype(np.float64)
        values = sizes**E * h**H
        values[0] = 0.0
        acc[view] += values[lab]
    out[box] = acc
    return out


def cluster_masses(stat: np.ndarray, u: float, connectivity: int = 18) -> tuple[np.ndarray, np.ndarray]:
    """Clusters of ``stat >= u`` and their masses (sum of ``stat`` over each cluster).

    Returns the label image (0 = background) and the masses indexed by label
    (``masses[0] = 0``).
    """
    stat = np.asarray(stat, dtype=np.float64)
    structure = _CONN18 if connectivity == 18 else _CONN26 if connectivity == 26 else None
    if structure is None:
        raise ValueError(f"connectivity must be 18 or 26, got {connectivity}")
    above = np.isfinite(stat) & (stat >= u)
    lab, nlab = ndimage.label(above, structure=structure)
    masses = np.bincount(lab.ravel(), weights=np.where(above, stat, 0.0).ravel(), minlength=nlab + 1)
    masses[0] = 0.0
    return lab, masses


@dataclass
class ClusterPermutationResult:
    t_obs: np.ndarray  # (x, y, z), NaN outside the mask
    n_perm: int
    max_t_null: np.ndarray  # (n_perm,)
    p_fwe: np.ndarray  # voxelwise max-T FWE p
    cluster_forming_t: float | None = None
    cluster_labels: np.ndarray | None = None  # observed clusters
    cluster_mass: np.ndarray | None = None  # mass per label (index 0 unused)
    cluster_p_fwe: np.ndarray | None = None  # FWE p per label (index 0 unused)
    max_mass_null: np.ndarray | None = None
    tfce_obs: np.ndarray | None = None
    tfce_p_fwe: np.ndarray | None = None
    max_tfce_null: np.ndarray | None = None


def _fwe_p(null_max: np.ndarray, observed: np.ndarray) -> np.ndarray:
    """Share of permutations whose maximum reaches the observed value (identity included)."""
    ordered = np.sort(null_max)
    return (null_max.size - np.searchsorted(ordered, observed, side="left")) / null_max.size


def permutation_cluster(Y, X, c, mask, n_perm: int = 1000, seed: int = 0, cluster_forming_t: float | None = None,
                        tfce_dh: float | None = None, batch: int = 32, block_voxels: int = 50000,
                        dtype=np.float64, client=None) -> ClusterPermutationResult:
    """Max-T, cluster-mass and TFCE FWE inference by Freedman–Lane permutation.

    Parameters
    ----------
    Y : array (n, x, y, z), numpy or dask
        The masked voxels are read once into memory (n × voxels float64).
    X : (n, p) design; c : (p,) contrast
    mask : boolean image (x, y, z)
    n_perm : permutations including the identity
    seed : permutations are drawn from this seed only
    cluster_forming_t : T threshold of the clusters (e.g. ``stats.rft.height_threshold(0.001, df, "T")``);
        None: no cluster-mass inference
    tfce_dh : TFCE step; None: no TFCE
    batch : permutations whose T images are held together (memory: batch × voxels × 8 bytes)
    dtype : precision of the permutation products (see :func:`freedman_lane_t`)
    client : dask.distributed.Client, optional
        Runs the batches as tasks on its workers (the masked data are sent to each worker once);
        default: in this process.

    Results depend on ``seed`` and ``n_perm`` only, not on ``batch``, ``block_voxels`` or where
    the batches run.
    """
    X, n = _checked_design(Y, X, n_perm)
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != tuple(Y.shape[1:]):
        raise ValueError(f"mask shape {mask.shape} differs from the images {tuple(Y.shape[1:])}")
    Ym = Y[:, mask] if not hasattr(Y, "dask") else Y.reshape(n, -1)[:, np.flatnonzero(mask.ravel())].compute()
    Ym = np.asarray(Ym, dtype=np.float64)
    perms = _permutations(n, n_perm, seed)
    options = dict(cluster_forming_t=cluster_forming_t, tfce_dh=tfce_dh, block_voxels=block_voxels, dtype=dtype)
    starts = range(0, n_perm, batch)
    if client is None:
        parts = [_batch_maxima(Ym, X, c, mask, perms[b0 : b0 + batch], b0 == 0, **options) for b0 in starts]
    else:
        data, where = client.scatter([Ym, mask], broadcast=True)
        parts = client.gather([client.submit(_batch_maxima, data, X, c, where, perms[b0 : b0 + batch], b0 == 0,
                                             **options, pure=False) for b0 in starts])
    first = parts[0]
    max_t = np.concatenate([p["max_t"] for p in parts])
    t_obs = first["t_obs"]
    p_img = np.full(mask.shape, np.nan)
    p_img[mask] = _fwe_p(max_t, t_obs[mask])
    res = ClusterPermutationResult(t_obs, n_perm, max_t, p_img, cluster_forming_t)
    if cluster_forming_t is not None:
        max_mass = np.concatenate([p["max_mass"] for p in parts])
        cp = _fwe_p(max_mass, first["mass_obs"])
        cp[0] = np.nan
        res.cluster_labels, res.cluster_mass, res.cluster_p_fwe, res.max_mass_null = (
            first["lab_obs"], first["mass_obs"], cp, max_mass)
    if tfce_dh is not None:
        max_tfce = np.concatenate([p["max_tfce"] for p in parts])
        tp = np.full(mask.shape, np.nan)
        tp[mask] = _fwe_p(max_tfce, first["tfce_obs"][mask])
        res.tfce_obs, res.tfce_p_fwe, res.max_tfce_null = first["tfce_obs"], tp, max_tfce
    return res


def _batch_maxima(Ym, X, c, mask, P, identity_first: bool, cluster_forming_t, tfce_dh, block_voxels,
                  dtype) -> dict:
    """Per permutation of ``P``: the largest T, cluster mass and TFCE; the observed images when
    ``identity_first`` (the first row of ``P`` is the identity)."""
    V = Ym.shape[1]
    T = np.empty((P.shape[0], V))
    for v0 in range(0, V, block_voxels):
        T[:, v0 : v0 + block_voxels] = freedman_lane_t(Ym[:, v0 : v0 + block_voxels], X, c, P, dtype=dtype)
    out = {"max_t": np.where(np.isfinite(T), T, -np.inf).max(axis=1),
           "max_mass": np.zeros(P.shape[0]) if cluster_forming_t is not None else None,
           "max_tfce": np.zeros(P.shape[0]) if tfce_dh is not None else None}
    image = np.full(mask.shape, np.nan)
    for r in range(P.shape[0]):
        observed = identity_first and r == 0
        if cluster_forming_t is None and tfce_dh is None and not observed:
            break
        image[mask] = T[r]
        if observed:
            out["t_obs"] = image.copy()
        if cluster_forming_t is not None:
            lab, masses = cluster_masses(image, cluster_forming_t)
            out["max_mass"][r] = masses.max() if masses.size else 0.0
            if observed:
                out["lab_obs"], out["mass_obs"] = lab, masses
        if tfce_dh is not None:
            t = tfce(image, dh=tfce_dh)
            out["max_tfce"][r] = t.max()
            if observed:
                out["tfce_obs"] = np.where(mask, t, np.nan)
    return out


def cluster_table(result: ClusterPermutationResult, mask: np.ndarray, affine: np.ndarray,
                  labels_img: np.ndarray | None = None, label_names: dict | None = None) -> pd.DataFrame:
    """One row per observed cluster of :func:`permutation_cluster`, largest mass first.

    Each row: the cluster, its peak (x, y, z in the world coordinates of
    ``affine``) and peak T, voxels, mass, FWE p by cluster mass, the peak's
    FWE p by max-T, the peak's atlas label (``labels_img`` with
    ``label_names``) and, with TFCE, the lowest TFCE FWE p in the cluster.
    """
    T = np.where(mask, result.t_obs, -np.inf)
    affine = np.asarray(affine, dtype=float)
    rows = []
    for label in range(1, len(result.cluster_mass)):
        members = result.cluster_labels == label
        idx = np.unravel_index(np.argmax(np.where(members, T, -np.inf)), T.shape)
        xyz = affine[:3, :3] @ np.asarray(idx, dtype=float) + affine[:3, 3]
        row = {"cluster": label, "x": xyz[0], "y": xyz[1], "z": xyz[2], "T": float(T[idx]),
               "voxels": int(members.sum()), "mass": float(result.cluster_mass[label]),
               "p_fwe_cluster_mass": float(result.cluster_p_fwe[label]), "p_fwe_max_t": float(result.p_fwe[idx]),
               "label": (label_names or {}).get(int(labels_img[idx]), "") if labels_img is not None else ""}
        if result.tfce_p_fwe is not None:
            row["p_fwe_tfce"] = float(np.nanmin(result.tfce_p_fwe[members]))
        rows.append(row)
    table = pd.DataFrame(rows)
    return table.sort_values("mass", ascending=False).reset_index(drop=True) if len(table) else table


def cluster_p_map(result: ClusterPermutationResult) -> np.ndarray:
    """Every voxel's cluster-mass FWE p (NaN outside the observed clusters), float32."""
    out = np.full(result.cluster_labels.shape, np.nan, np.float32)
    inside = result.cluster_labels > 0
    out[inside] = result.cluster_p_fwe[result.cluster_labels[inside]]
    return out
