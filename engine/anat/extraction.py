"""Brain extraction of a T1w image by a trained network (deepbet), run with onnxruntime.

An atlas mask carried back through a registration is only as good as that
registration's start: on a head with strong receive-coil bias or an unusual
position it lands on the scalp.  deepbet (Fisch et al., *Comput. Biol. Med.*
2024) was trained on about 7,000 T1w scans from many sites and scanners and
finds the brain from the image alone, before any registration.  Its two
networks ship with ferritin as ONNX files (``models/deepbet``, MIT licence):
the first finds the brain's bounding box on the head resampled to 128³, the
second segments that box resampled to 256³, which makes the second stage
independent of the voxel size and of how much neck the field of view holds.

The pre- and post-processing follow ``deepbet.bet.BrainExtraction``: voxel axes
turned to RAS (no interpolation), nearest-neighbour resampling, intensities
clipped at the 0.5th and 99.5th percentiles and standardised, the largest
connected part kept and its holes filled.  The probability comes back to the
image's grid by linear interpolation rather than deepbet's nearest neighbour,
so that the mask's edge does not step with the 256³ grid on fine images.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from ..qsm.mask import largest_component

__all__ = ["BrainExtraction", "extract_brain", "EXTRACTION_METHOD"]

MODELS = Path(__file__).parent / "models" / "deepbet"
#: what the provenance records: the networks' origin and the runtime that ran them
EXTRACTION_METHOD = "deepbet 1.0.2 networks (ONNX)"

_BOX_SHAPE = (128, 128, 128)  # input of the bounding-box network
_MASK_SHAPE = (256, 256, 256)  # input of the mask network
_BOX_MARGIN = 0.1  # the box grows by this fraction of its size on each side (deepbet's)
_BOX_PROFILE = 0.02  # a slab belongs to the box where this share of it is brain (deepbet's)


@dataclass(frozen=True)
class BrainExtraction:
    """The brain of a T1w image: a mask and the network's probability, both on the image's grid."""

    mask: np.ndarray
    probability: np.ndarray
    method: str

    def volume_ml(self, affine) -> float:
        """The mask's volume in millilitres."""
        return float(self.mask.sum() * abs(np.linalg.det(np.asarray(affine, float)[:3, :3])) / 1000.0)


def extract_brain(t1: np.ndarray, affine: np.ndarray, threshold: float = 0.5) -> BrainExtraction:
    """Extract the brain of a T1w image with deepbet's networks.

    Parameters
    ----------
    t1 : ndarray (x, y, z)
        The T1w image: any orientation, voxel size and field of view that
        holds the whole brain.  Bias-corrected or not (deepbet was trained on
        uncorrected scans).
    affine : ndarray (4, 4)
        Its voxel-to-world affine (only the axes' directions are used).
    threshold : float
        Probability above which a voxel is brain (deepbet's default 0.5).

    Returns
    -------
    BrainExtraction
        Mask (the largest connected part, holes filled) and probability on
        the grid of ``t1``.
    """
    t1 = np.asarray(t1, dtype=np.float32)
    if t1.ndim != 3 or min(t1.shape) < 8:
        raise ValueError(f"brain extraction needs a 3-D image of at least 8 voxels a side, got shape {t1.shape}")
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must lie between 0 and 1, got {threshold}")
    ornt = nib.io_orientation(np.asarray(affine, float))
    x = np.nan_to_num(nib.apply_orientation(t1, ornt))
    probability = _brain_probability(x)
    mask = probability > threshold
    if mask.any():
        mask = ndimage.binary_fill_holes(largest_component(mask))
    back = nib.orientations.ornt_transform([[0, 1], [1, 1], [2, 1]], ornt)
    return BrainExtraction(mask=np.ascontiguousarray(nib.apply_orientation(mask, back)),
                           probability=np.ascontiguousarray(nib.apply_orientation(probability, back)),
                           method=f"{EXTRACTION_METHOD}, onnxruntime {metadata.version('onnxruntime')}")


def _brain_probability(x: np.ndarray) -> np.ndarray:
    """Brain probability of a RAS-ordered image: the box network, then the mask network within the box."""
    small = _nearest_exact(x, _BOX_SHAPE)
    low, high = np.quantile(small, [0.005, 0.995])
    box_prob = _run("bbox_model", _standardise(small, low, high))
    box = _bounding_box(largest_component(box_prob > 0.5), x.shape)
    probability = np.zeros(x.shape, np.float32)
    if box is None:
        return probability
    crop = x[box]
    prob = _run("model", _standardise(_nearest_exact(crop, _MASK_SHAPE), low, high))
    probability[box] = _resize_linear(prob, crop.shape)
    return probability


def _nearest_exact(x: np.ndarray, shape) -> np.ndarray:
    """``x`` resampled to ``shape`` by nearest neighbour at voxel centres (torch's 'nearest-exact')."""
    index = [np.minimum(((np.arange(n_out) + 0.5) * (n_in / n_out)).astype(np.int64), n_in - 1)
             for n_in, n_out in zip(x.shape, shape)]
    return x[np.ix_(*index)]


def _resize_linear(x: np.ndarray, shape) -> np.ndarray:
    """``x`` resampled to ``shape`` over the same extent, linearly between voxel centres."""
    coords = [(np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5 for n_in, n_out in zip(x.shape, shape)]
    grid = np.meshgrid(*coords, indexing="ij", sparse=True)
    full = [np.broadcast_to(g, shape) for g in grid]
    return ndimage.map_coordinates(x, full, order=1, mode="nearest").astype(np.float32)


def _standardise(x: np.ndarray, low: float, high: float) -> np.ndarray:
    """deepbet's input scaling: clip to [low, high], standardise, then ImageNet's mean 0.449 and sd 0.226."""
    y = np.clip((x - low) / max(float(high - low), 1e-12), 0.0, 1.0)
    sd = float(y.std(ddof=1))
    y = (y - y.mean()) / (sd if sd > 0 else 1.0)
    return (0.226 * y + 0.449).astype(np.float32)


def _bounding_box(small_mask: np.ndarray, shape) -> tuple[slice, ...] | None:
    """The box of the full image that the bounding-box network's mask spans, grown by deepbet's margin."""
    if not small_mask.any():
        return None
    box = []
    for axis, n in enumerate(shape):
        profile = small_mask.mean(axis=tuple(a for a in range(3) if a != axis))
        hit = np.flatnonzero(profile > _BOX_PROFILE)
        if hit.size == 0:
            return None
        scale = n / small_mask.shape[axis]
        centre = scale * (hit[0] + hit[-1] + 1) / 2
        size = (1 + 2 * _BOX_MARGIN) * scale * (hit[-1] + 1 - hit[0])
        centre, size = np.round(centre), np.round(size)
        box.append(slice(max(0, int(centre - size / 2)), min(n, int(centre + size / 2))))
    return tuple(box)


def _run(name: str, x: np.ndarray) -> np.ndarray:
    """Channel 1 (brain) of a network's softmax output for one image."""
    return _session(name).run(None, {"t1": x[None, None]})[0][0, 1]


@functools.cache
def _session(name: str):
    """One onnxruntime session per network and process, single-threaded (the same result on every worker)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(MODELS / f"{name}.onnx"), options, providers=["CPUExecutionProvider"])
