"""Scanner images kept as the integers they were acquired as.

A scanner digitises each image to 12- or 16-bit integers and writes them with a
linear scaling (DICOM RescaleSlope/Intercept, NIfTI ``scl_slope``/``scl_inter``);
read as float32 they take twice the space and no lossless compressor gets it
back, because the mantissas of ``k * slope`` look random.  The cohort store
therefore finds the integer grid behind such an image and keeps the codes with
CF ``scale_factor``/``add_offset`` attributes, which xarray decodes on reading.
An image that is not on one integer grid (computed data, echoes scaled
differently) stays float32: packing never loses information beyond float32
rounding of the decoded value.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import xarray as xr

__all__ = ["IntegerCoding", "integer_coding", "packed_variable", "unpack_floats"]

_SAMPLE = 1_000_000
# Largest distance of a value from its grid point, in units of the grid step,
# still taken as "on the grid": float32 rounding of k * step for 16-bit k is at
# most ~0.004 steps; anything between grid points is an order of magnitude
# farther.
_OFF_GRID = 0.02


@dataclass(frozen=True)
class IntegerCoding:
    """``values == codes * scale + offset`` with ``codes`` of integer ``dtype``."""

    scale: float
    offset: float
    dtype: np.dtype

    def encode(self, values: np.ndarray) -> np.ndarray:
        codes = np.empty(values.shape, self.dtype)
        for slab, out in zip(_slabs(values), _slabs(codes), strict=True):
            out[:] = np.rint((slab.astype(np.float64) - self.offset) / self.scale)
        return codes

    def decode(self, codes: np.ndarray) -> np.ndarray:
        return (codes.astype(np.float64) * self.scale + self.offset).astype(np.float32)


def _slabs(x: np.ndarray) -> np.ndarray:
    """``x`` as rows along its first axis (one row for 1-D), viewed in place: one float64 temporary per row."""
    return x.reshape(x.shape[0], -1) if x.ndim > 1 else x.reshape(1, -1)


def _sampled_levels(flat: np.ndarray, seed: int) -> np.ndarray:
    if flat.size <= _SAMPLE:
        return np.unique(flat.astype(np.float64))
    idx = np.random.default_rng(seed).integers(0, flat.size, _SAMPLE)
    return np.unique(flat[idx].astype(np.float64))


def _refined_grid(levels: np.ndarray, step: float) -> tuple[float, float]:
    """Step and origin fitted to the sampled levels, widening the fit as the step sharpens.

    The smallest gap carries the float32 rounding of its two values, so counting
    steps with it is only safe near the first level; each fit over a window
    sharpens the step enough to count eight times farther.
    """
    origin, window = float(levels[0]), 8.0
    while True:
        near = levels[levels - levels[0] <= window * step]
        k = np.rint((near - levels[0]) / step)
        if k[-1] > 0:
            step, origin = (float(v) for v in np.polyfit(k, near, 1))
        if near.size == levels.size:
            return step, origin
        window *= 8


def _as_header_scaling(levels: np.ndarray, step: float, origin: float) -> tuple[float, float]:
    """The fitted step and origin rounded to float32 when the levels fit those as well.

    NIfTI and DICOM scalings are float32 numbers; decoding with the header's own
    slope reproduces every value the reader of the file got, bit for bit.
    """
    def misfit(s, o):
        r = (levels - o) / s
        return np.abs(r - np.rint(r)).max()

    s32, o32 = float(np.float32(step)), float(np.float32(origin))
    return (s32, o32) if misfit(s32, o32) <= misfit(step, origin) + 1e-3 else (step, origin)


def integer_coding(values: np.ndarray, seed: int = 0) -> IntegerCoding | None:
    """The integer grid an image's values lie on, or None when they lie on none.

    The step is estimated from the distinct values of a sample, refined by least
    squares over them, and then checked on every voxel: each value must lie within
    a small fraction of a step of a grid point, and the grid points used must fit
    an 8- or 16-bit unsigned integer.

    Parameters
    ----------
    values : ndarray of float
        The image (any shape, at least 1-D); scanned slab by slab along its first axis.
    seed : int
        Seed of the voxel sample used to estimate the step (the check covers every voxel).

    Returns
    -------
    IntegerCoding or None
    """
    x = np.asarray(values)
    if x.ndim == 0 or x.size < 2 or not np.issubdtype(x.dtype, np.floating):
        return None
    levels = _sampled_levels(x.reshape(-1), seed)
    if levels.size < 2 or not np.all(np.isfinite(levels)):
        return None
    step = float(np.diff(levels).min())
    if step <= 0 or (levels[-1] - levels[0]) / step > 2 * np.iinfo(np.uint16).max:
        return None  # far finer than 16 bits: not integer data (the exact count is checked below)
    step, origin = _refined_grid(levels, step)
    if abs(origin / step - round(origin / step)) < _OFF_GRID:
        origin = 0.0  # zero is a grid point (scanners' intercept is usually 0): keep it exactly zero
    step, origin = _as_header_scaling(levels, step, origin)
    lo_code, hi_code = np.inf, -np.inf
    for slab in _slabs(x):
        r = (slab.astype(np.float64) - origin) / step
        codes = np.rint(r)
        if not np.abs(r - codes).max() <= _OFF_GRID:  # NaN and infinity fail the comparison too
            return None
        lo_code, hi_code = min(lo_code, codes.min()), max(hi_code, codes.max())
    span = hi_code - lo_code
    dtype = np.dtype(np.uint8) if span <= np.iinfo(np.uint8).max else np.dtype(np.uint16)
    if span > np.iinfo(np.uint16).max:
        return None
    return IntegerCoding(scale=float(step), offset=float(origin + lo_code * step), dtype=dtype)


def packed_variable(dims, values: np.ndarray, attrs: dict, seed: int = 0) -> xr.Variable:
    """An image as the variable to store: integer codes with their scaling, or the floats as they are."""
    coding = integer_coding(values, seed=seed)
    if coding is None:
        return xr.Variable(dims, values, attrs)
    return xr.Variable(dims, coding.encode(values),
                       {**attrs, "scale_factor": coding.scale, "add_offset": coding.offset})


def unpack_floats(ds: xr.Dataset) -> xr.Dataset:
    """``ds`` with every packed image read back as float32, like the images it was packed from.

    xarray decodes CF scaling into float64 (the attributes' JSON numbers carry no
    width); the images were float32 before packing and the steps that read them
    expect float32, so the decoded values are narrowed again, lazily.
    """
    packed = [name for name, var in ds.data_vars.items()
              if "scale_factor" in var.encoding and np.issubdtype(var.encoding.get("dtype", np.float64), np.integer)]
    if not packed:
        return ds
    return ds.assign({name: ds[name].astype(np.float32) for name in packed})
