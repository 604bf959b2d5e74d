"""Between NumPy/NIfTI conventions and ANTs (ITK) images and transforms.

NIfTI affines map voxels to RAS+ millimetres; ITK works in LPS.  Only this
module knows the difference.  ANTs is used for registration; every
resampling afterwards is done in NumPy from point maps, so that a chain of
transforms is applied with a single interpolation.
"""

from __future__ import annotations

import contextlib
import os
import tempfile

import numpy as np

__all__ = ["to_ants", "from_ants", "deterministic", "itk_matrix_to_ras", "points_map", "atropos", "LPS"]

LPS = np.diag([-1.0, -1.0, 1.0])
_OUTSIDE = -1.0e9  # ANTs' default value cannot be NaN


def _ants():
    try:
        import ants
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ImportError("the anatomy stages need antspyx (pip install 'ferritin[anat]')") from exc
    return ants


def to_ants(data: np.ndarray, affine: np.ndarray):
    """An ANTsImage of ``data`` (voxel order i, j, k) placed by a RAS ``affine``."""
    ants = _ants()
    affine = np.asarray(affine, dtype=float)
    lin = affine[:3, :3]
    spacing = np.sqrt((lin**2).sum(axis=0))
    direction = LPS @ (lin / spacing)
    origin = LPS @ affine[:3, 3]
    return ants.from_numpy(np.asarray(data, dtype=np.float32), origin=tuple(origin), spacing=tuple(spacing),
                           direction=direction)


def from_ants(img) -> tuple[np.ndarray, np.ndarray]:
    """Array and RAS affine of an ANTsImage."""
    direction = np.asarray(img.direction, dtype=float)
    spacing = np.asarray(img.spacing, dtype=float)
    affine = np.eye(4)
    affine[:3, :3] = LPS @ direction * spacing
    affine[:3, 3] = LPS @ np.asarray(img.origin, dtype=float)
    return img.numpy(), affine


@contextlib.contextmanager
def deterministic(seed: int = 1):
    """One ITK thread and ANTs' deterministic mode: bitwise repeatable registrations."""
    ants = _ants()
    old = os.environ.get("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS")
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = "1"
    ants.config.set_ants_deterministic(True, int(seed))
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", None)
        else:
            os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = old


def itk_matrix_to_ras(transform_file: str) -> np.ndarray:
    """A 4x4 RAS matrix from an ITK affine/rigid transform file (fixed → moving points)."""
    ants = _ants()
    tx = ants.read_transform(transform_file)
    p = np.asarray(tx.parameters, dtype=float)
    c = np.asarray(tx.fixed_parameters, dtype=float)
    A = p[:9].reshape(3, 3)
    t = p[9:12]
    m_lps = np.eye(4)
    m_lps[:3, :3] = A
    m_lps[:3, 3] = t + c - A @ c
    F = np.eye(4)
    F[:3, :3] = LPS
    return F @ m_lps @ F


def points_map(fixed_shape, fixed_affine, transforms: list[str], moving_reference) -> np.ndarray:
    """World (RAS mm) position in the moving space of every fixed-grid voxel.

    ``transforms`` is an ANTs transform list (fixed → moving, as returned in
    ``fwdtransforms`` when the fixed image is the reference).  The map is
    obtained by resampling three coordinate images, so it is exact up to
    linear interpolation of a smooth field.

    Returns
    -------
    ndarray (3, *fixed_shape)
    """
    ants = _ants()
    ref_data, ref_aff = from_ants(moving_reference)
    ijk = np.indices(ref_data.shape, dtype=np.float64).reshape(3, -1)
    xyz = (ref_aff[:3, :3] @ ijk + ref_aff[:3, 3:4]).reshape((3, *ref_data.shape))
    fixed = to_ants(np.zeros(fixed_shape, np.float32), fixed_affine)
    out = []
    for c in range(3):
        moving = to_ants(xyz[c], ref_aff)
        warped = ants.apply_transforms(fixed, moving, transforms, interpolator="linear", defaultvalue=_OUTSIDE)
        out.append(warped.numpy().astype(np.float64))
    pts = np.stack(out)
    # Fixed voxels that map outside the moving image have no position.
    pts[:, (pts <= _OUTSIDE / 2).any(axis=0)] = np.nan
    return pts


def atropos(image, mask, priors, workdir: str, *, mrf: float, iterations: int, prior_weight: float) -> list:
    """Atropos with tissue priors, its files kept inside ``workdir``.

    ``ants.atropos`` writes its prior and posterior images under names from
    ``tempfile.mktemp`` in the system temporary folder and never removes
    them: three files per subject, which fill ``/tmp`` on a cohort.  This
    runs the same library call with the files in ``workdir``.

    Returns
    -------
    list of ANTsImage
        One posterior probability image per prior, in the priors' order.
    """
    ants = _ants()
    from ants.internal import get_lib_fn, get_pointer_string, process_arguments

    # uncompressed: the files live for one call, and gzip costs seconds per map at 1 mm
    pattern = os.path.join(workdir, "atropos_prob%02d.nii")
    for k, prior in enumerate(priors, start=1):
        ants.image_write(prior, pattern % k)
    labels = image.clone("unsigned int")
    args = {
        "d": image.dimension,
        "a": image,
        "m-MULTINAME-0": f"[{mrf},{'x'.join(['1'] * image.dimension)}]",
        "o": f"[{get_pointer_string(labels)},{pattern}]",
        "c": f"[{iterations},0]",
        "i": f"PriorProbabilityImages[{len(priors)},{pattern},{prior_weight}]",
        "x": mask.clone("unsigned int"),
        "r": 0,  # Atropos seeds from the clock unless told not to
    }
    status = get_lib_fn("Atropos")(process_arguments(args))
    if status != 0:
        raise RuntimeError(f"Atropos exited with status {status}")
    return [ants.image_read(pattern % k) for k in range(1, len(priors) + 1)]


@contextlib.contextmanager
def scratch_dir():
    """A private folder for ANTs' transform files, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="ferritin-ants-") as d:
        yield d
