"""Excursion sets, clusters, peaks and small-volume correction, as SPM12 lists them.

* Clusters: 18-connected components of voxels with statistic >= u.
* Peaks: voxels of the excursion set not exceeded by any 18-neighbour in it
  (ties count); up to ``max_peaks`` per cluster, ``min_distance_mm`` apart.
* p-values: peak FWE (``spm_P(1, 0, T, ...)`` with Bonferroni cap), peak
  uncorrected (``spm_P`` with R = 1), equivalent Z, cluster FWE and
  uncorrected from the cluster size in resels.
* SVC: the same table restricted to a small volume (a sphere, with SPM's
  analytic resels, or any mask image, e.g. an atlas region ∩ a sphere).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from nibabel.affines import voxel_sizes
from scipy import ndimage, special

from . import rft

__all__ = ["Inference", "cluster_table", "sphere_mask", "svc_table", "peak_labels"]

_CONN18 = ndimage.generate_binary_structure(3, 2)


@dataclass(frozen=True)
class Inference:
    """What a table needs to know about the statistic image."""

    df: tuple[float, float]
    stat: str
    fwhm_vox: np.ndarray
    resels: np.ndarray  # search-volume resel counts
    n_voxels: int  # S: voxels in the search volume
    affine: np.ndarray
    n: int = 1

    @property
    def v2r(self) -> float:
        f = np.asarray(self.fwhm_vox, dtype=float)
        return float(1.0 / np.prod(f[f > 0]))


def _z_equivalent(p_unc: float) -> float:
    if p_unc < 10 * rft.EPS:
        return float("inf")
    return float(np.sqrt(2) * special.erfinv(2 * (1 - p_unc) - 1))


def _local_maxima(stat: np.ndarray, inset: np.ndarray) -> np.ndarray:
    filled = np.where(inset, stat, -np.inf)
    neighbourhood_max = ndimage.maximum_filter(filled, footprint=_CONN18, mode="constant", cval=-np.inf)
    return inset & (filled >= neighbourhood_max)


def _table(stat, inset, info: Inference, u: float, max_peaks: int, min_distance_mm: float,
           labels_img=None, label_names=None) -> pd.DataFrame:
    lab, nlab = ndimage.label(inset, structure=_CONN18)
    maxima = _local_maxima(stat, inset)
    rows = []
    vox_mm = voxel_sizes(np.asarray(info.affine, dtype=float))
    clusters = []
    for c in range(1, nlab + 1):
        members = lab == c
        idx = np.argwhere(maxima & members)
        vals = stat[tuple(idx.T)]
        order = np.argsort(-vals, kind="stable")
        clusters.append((float(vals[order[0]]), c, idx[order], vals[order], int(members.sum())))
    clusters.sort(key=lambda t: -t[0])
    for rank, (_, _label, idx, _vals, size) in enumerate(clusters, start=1):
        K = size * info.v2r
        pk = rft.p_rf(1, K, u, info.df, info.stat, info.resels, info.n)
        chosen = []
        for ijk in idx:
            xyz = ijk * vox_mm
            if all(np.linalg.norm(xyz - other * vox_mm) >= min_distance_mm for other in chosen):
                chosen.append(ijk)
            if len(chosen) >= max_peaks:
                break
        for n_peak, ijk in enumerate(chosen):
            t = float(stat[tuple(ijk)])
            p_fwe = rft.p_corrected(1, 0, t, info.df, info.stat, info.resels, info.n, S=info.n_voxels)
            p_unc = rft.p_rf(1, 0, t, info.df, info.stat, [1], info.n).P
            mm = (np.asarray(info.affine) @ np.r_[ijk, 1.0])[:3]
            row = {
                "cluster": rank, "peak": n_peak + 1,
                "x": float(mm[0]), "y": float(mm[1]), "z": float(mm[2]),
                info.stat: t, "Z": _z_equivalent(p_unc), "p_unc": p_unc, "p_fwe": p_fwe,
                "cluster_voxels": size, "cluster_mm3": float(size * np.prod(vox_mm)),
                "cluster_p_fwe": pk.P if n_peak == 0 else np.nan,
                "cluster_p_unc": pk.p if n_peak == 0 else np.nan,
            }
            if labels_img is not None:
                code = int(labels_img[tuple(ijk)])
                row["label"] = (label_names or {}).get(code, "") if code else ""
            rows.append(row)
    cols = ["cluster", "peak", "x", "y", "z", info.stat, "Z", "p_unc", "p_fwe", "cluster_voxels", "cluster_mm3",
            "cluster_p_fwe", "cluster_p_unc"] + (["label"] if labels_img is not None else [])
    return pd.DataFrame(rows, columns=cols)


def _drop_small_clusters(inset: np.ndarray, k_voxels: int) -> np.ndarray:
    """The excursion set without its 18-connected clusters of fewer than ``k_voxels`` voxels."""
    if k_voxels <= 0:
        return inset
    lab, nlab = ndimage.label(inset, structure=_CONN18)
    small = np.bincount(lab.ravel(), minlength=nlab + 1) < k_voxels
    small[0] = False
    return inset & ~small[lab]


def cluster_table(stat, mask, info: Inference, u: float, k_voxels: int = 0, max_peaks: int = 3,
                  min_distance_mm: float = 8.0, labels_img=None, label_names=None) -> pd.DataFrame:
    """SPM's results table for the whole search volume.

    Parameters
    ----------
    stat : array (x, y, z)
        Statistic image (T, F, ...); NaN outside the mask.
    mask : array (x, y, z) of bool
    info : Inference
    u : float
        Height threshold (statistic value), e.g. ``height_threshold(0.005, df, "T")``.
    k_voxels : int
        Extent threshold: clusters with fewer voxels are dropped.
    labels_img, label_names : optional
        Atlas image on the same grid and ``{code: name}`` for peak labels.
    """
    stat = np.asarray(stat, dtype=float)
    mask = np.asarray(mask, dtype=bool)
    inset = _drop_small_clusters(mask & np.isfinite(stat) & (stat >= u), k_voxels)
    return _table(stat, inset, info, u, max_peaks, min_distance_mm, labels_img, label_names)


def sphere_mask(shape, affine, centre_mm, radius_mm) -> np.ndarray:
    """Voxels whose centres are within ``radius_mm`` of ``centre_mm`` (inclusive, as SPM)."""
    ijk = np.indices(shape).reshape(3, -1).T
    xyz = ijk @ np.asarray(affine)[:3, :3].T + np.asarray(affine)[:3, 3]
    inside = ((xyz - np.asarray(centre_mm, dtype=float)) ** 2).sum(axis=1) <= radius_mm**2
    return inside.reshape(shape)


def svc_table(stat, mask, info: Inference, u: float, volume=None, sphere=None, k_voxels: int = 0,
              labels_img=None, label_names=None) -> pd.DataFrame:
    """Small-volume corrected table (``spm_VOI``).

    Give either ``sphere=(centre_mm, radius_mm)`` (analytic resels, as SPM)
    or ``volume`` (a boolean mask image on the same grid, e.g. an atlas region
    ∩ a sphere; resels from the whole image).  The whole-brain threshold ``u``
    is kept; clusters are re-formed inside the small volume; up to 16 peaks
    4 mm apart are listed, as SPM does for SVC.
    """
    stat = np.asarray(stat, dtype=float)
    mask = np.asarray(mask, dtype=bool)
    vox_mm = voxel_sizes(np.asarray(info.affine, dtype=float))
    if (volume is None) == (sphere is None):
        raise ValueError("give exactly one of volume= or sphere=")
    if sphere is not None:
        centre, radius = sphere
        vol = sphere_mask(stat.shape, info.affine, centre, radius)
        R = rft.sphere_resels(radius, info.fwhm_vox, vox_mm)
    else:
        vol = np.asarray(volume, dtype=bool)
        if vol.shape != stat.shape:
            raise ValueError(f"small volume shape {vol.shape} differs from the statistic image {stat.shape}")
        if not vol.any():
            raise ValueError("the small volume is empty")
        R = rft.resel_counts(vol, info.fwhm_vox)
    S = int((vol & mask).sum())
    small = Inference(info.df, info.stat, info.fwhm_vox, R, S, info.affine, info.n)
    inset = _drop_small_clusters(vol & mask & np.isfinite(stat) & (stat >= u), k_voxels)
    table = _table(stat, inset, small, u, 16, 4.0, labels_img, label_names)
    table.attrs["resels"] = R.tolist()
    table.attrs["n_voxels"] = S
    return table


def peak_labels(xyz_mm, atlas, affine, names: dict) -> list[str]:
    """Atlas label name at each MNI coordinate (nearest voxel; '' outside)."""
    inv = np.linalg.inv(np.asarray(affine))
    out = []
    for p in np.atleast_2d(xyz_mm):
        ijk = np.round(inv[:3, :3] @ p + inv[:3, 3]).astype(int)
        if np.all(ijk >= 0) and np.all(ijk < atlas.shape):
            out.append(names.get(int(atlas[tuple(ijk)]), ""))
        else:
            out.append("")
    return out
