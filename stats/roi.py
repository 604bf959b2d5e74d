"""Regions of interest from statistical maps, and per-subject ROI means.

The reference study took the clusters of increased QSM that survived small-
volume correction and averaged χ and modulated GM over each of them, per
subject, for the post-hoc statistics.  These functions do that on arrays:
:func:`cluster_roi` cuts the cluster around a peak out of a thresholded map,
:func:`roi_means` averages a stacked ``(subject, x, y, z)`` array (numpy or
dask) over any number of ROI masks in one pass.
"""

from __future__ import annotations

import numpy as np

from .clusters import _CONN18

__all__ = ["cluster_roi", "roi_means", "label_image"]


def cluster_roi(stat, u: float, peak_ijk, within=None) -> np.ndarray:
    """The 18-connected cluster of ``stat >= u`` that contains ``peak_ijk``.

    Parameters
    ----------
    stat : array (x, y, z)
        Statistic image (NaN outside the analysis mask).
    u : float
        Cluster-forming height threshold.
    peak_ijk : sequence of 3 int
        A voxel of the wanted cluster (e.g. the SVC peak).
    within : array of bool, optional
        Restrict the cluster to this volume first (e.g. the small volume of an
        SVC, so that a thalamic cluster does not run on into the neighbours).

    Returns
    -------
    numpy.ndarray of bool
        The cluster; raises ``ValueError`` if the peak is below ``u``.
    """
    from scipy import ndimage

    stat = np.asarray(stat, dtype=float)
    if stat.ndim != 3:
        raise ValueError(f"stat must be a 3-D image, got shape {stat.shape}")
    peak = tuple(int(v) for v in peak_ijk)
    if len(peak) != 3 or any(not 0 <= p < n for p, n in zip(peak, stat.shape)):
        raise ValueError(f"peak {peak} is outside the image of shape {stat.shape}")
    inset = np.isfinite(stat) & (stat >= u)
    if within is not None:
        within = np.asarray(within, dtype=bool)
        if within.shape != stat.shape:
            raise ValueError(f"within has shape {within.shape}, the image {stat.shape}")
        inset &= within
    if not inset[peak]:
        raise ValueError(f"the peak {peak} (value {stat[peak]:.3g}) is not above the threshold {u:.3g}")
    lab, _ = ndimage.label(inset, structure=_CONN18)
    return lab == lab[peak]


def label_image(masks: dict) -> tuple[np.ndarray, dict[int, str]]:
    """ROI masks as one integer image (1, 2, … in order; later ROIs win overlaps) and its names."""
    masks = dict(masks)
    if not masks:
        raise ValueError("no ROI masks given")
    shape = np.asarray(next(iter(masks.values()))).shape
    out = np.zeros(shape, dtype=np.int16)
    names = {}
    for n, (name, m) in enumerate(masks.items(), start=1):
        m = np.asarray(m, dtype=bool)
        if m.shape != shape:
            raise ValueError(f"ROI {name!r} has shape {m.shape}, the others {shape}")
        out[m] = n
        names[n] = name
    return out, names


def roi_means(Y, masks: dict) -> np.ndarray:
    """Mean of each subject's map within each ROI, ignoring NaN voxels.

    Parameters
    ----------
    Y : array (subject, x, y, z), numpy or dask
        Stacked maps; NaN marks voxels a subject does not cover.
    masks : dict of name -> bool array (x, y, z)
        ROIs; they may overlap.

    Returns
    -------
    numpy.ndarray (subject, roi)
        In the order of ``masks``; NaN where a subject has no finite voxel in
        the ROI.  With a dask ``Y`` the stack is read once, block by block.
    """
    import dask.array as da

    names = list(masks)
    if not names:
        raise ValueError("no ROI masks given")
    spatial = tuple(Y.shape[1:])
    W = np.zeros((*spatial, len(names)), dtype=np.float32)
    for n, name in enumerate(names):
        m = np.asarray(masks[name], dtype=bool)
        if m.shape != spatial:
            raise ValueError(f"ROI {name!r} has shape {m.shape}, the maps {spatial}")
        if not m.any():
            raise ValueError(f"ROI {name!r} is empty")
        W[m, n] = 1.0
    Yd = Y if isinstance(Y, da.Array) else da.from_array(np.asarray(Y), chunks=(-1, 64, 64, 64))
    # weights chunked like the maps, so the contraction is blockwise and the
    # memory it needs is that of one block, whatever the cohort size
    Wd = da.from_array(W, chunks=(*Yd.chunks[1:], len(names)))
    finite = da.isfinite(Yd)
    axes = ([1, 2, 3], [0, 1, 2])
    sums = da.tensordot(da.where(finite, Yd, 0.0).astype(np.float64), Wd.astype(np.float64), axes=axes)
    counts = da.tensordot(finite.astype(np.float64), Wd.astype(np.float64), axes=axes)
    sums, counts = da.compute(sums, counts)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
