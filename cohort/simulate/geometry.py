"""Where a subject's head sits: rigid placements, grids, and the atrophy's displacement field."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from nibabel.affines import voxel_sizes
from scipy import ndimage

from .spec import SimulationSpec

__all__ = ["atrophy_displacement"]

def _rotation(angles_rad) -> np.ndarray:
    ax, ay, az = angles_rad
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _rigid(rng, deg: float, mm: float) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3] = _rotation(np.deg2rad(rng.uniform(-deg, deg, 3)))
    m[:3, 3] = rng.uniform(-mm, mm, 3)
    return m


def _grid_affine(fov_mm, vs: float, rotation: np.ndarray, center=(0.0, 0.0, 0.0)):
    shape = tuple(int(round(f / vs)) for f in fov_mm)
    aff = np.eye(4)
    aff[:3, :3] = rotation * vs
    c = (np.asarray(shape) - 1) / 2.0
    aff[:3, 3] = np.asarray(center) - aff[:3, :3] @ c
    return shape, aff


def _world_coords(shape, affine) -> np.ndarray:
    """World coordinates (3, *shape) of every voxel."""
    ijk = np.indices(shape, dtype=np.float32).reshape(3, -1)
    xyz = affine[:3, :3].astype(np.float32) @ ijk + affine[:3, 3:4].astype(np.float32)
    return xyz.reshape((3, *shape))


@dataclass
class Placement:
    """Where a subject's head is: scanner world (mm) → MNI (mm).

    ``mni = warp(A @ p)`` where ``A`` is affine (scale, rotation, shift) and
    ``warp`` adds a smooth displacement field given on a coarse MNI lattice.
    GRE scanner points are first moved by the rigid head ``motion``.
    """

    affine: np.ndarray  # scanner → pre-warp MNI
    motion: np.ndarray  # GRE scanner → T1 scanner (head motion between scans)
    disp_grid_affine: np.ndarray
    disp: np.ndarray  # (3, nx, ny, nz) displacement (mm) on the coarse MNI lattice
    #: planted atrophy (see :func:`atrophy_displacement`): lattice affine and (3, ...) displacement, or None
    atrophy_grid_affine: np.ndarray | None = None
    atrophy: np.ndarray | None = None

    def to_mni(self, xyz: np.ndarray, gre: bool = False) -> np.ndarray:
        """Map world points (3, ...) of the T1 (or GRE, ``gre=True``) scanner frame to MNI."""
        shp = xyz.shape[1:]
        p = xyz.reshape(3, -1).astype(np.float64)
        if gre:
            p = self.motion[:3, :3] @ p + self.motion[:3, 3:4]
        q = self.affine[:3, :3] @ p + self.affine[:3, 3:4]
        q = q + _sample_field(self.disp, self.disp_grid_affine, q, order=3)
        if self.atrophy is not None:
            q = q + _sample_field(self.atrophy, self.atrophy_grid_affine, q, order=1)
        return q.reshape((3, *shp)).astype(np.float32)

    def mni_preimages(self, mni: np.ndarray, iterations: int = 6) -> tuple[np.ndarray, np.ndarray]:
        """MNI points (3, n) with the atrophy undone, then the warp too, by fixed-point iteration.

        Returns the points after the warp (before the atrophy) and after the
        affine (before the warp); the displacements are smooth and a few mm,
        so a few iterations converge.
        """
        after_warp = mni
        if self.atrophy is not None:
            for _ in range(iterations):
                after_warp = mni - _sample_field(self.atrophy, self.atrophy_grid_affine, after_warp, order=1)
        after_affine = after_warp
        for _ in range(iterations):
            after_affine = after_warp - _sample_field(self.disp, self.disp_grid_affine, after_affine, order=3)
        return after_warp, after_affine


def _sample_field(field: np.ndarray, grid_affine: np.ndarray, points: np.ndarray, order: int) -> np.ndarray:
    """A (3, ...) vector field on a lattice, sampled at world points (3, n)."""
    inv = np.linalg.inv(grid_affine)
    ijk = inv[:3, :3] @ points + inv[:3, 3:4]
    return np.stack([ndimage.map_coordinates(field[c], ijk, order=order, mode="nearest") for c in range(3)])


def atrophy_displacement(loss: np.ndarray, grid_affine: np.ndarray, pad: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Displacement (mm) that shrinks tissue by the fraction ``loss`` at each voxel, and its modulation.

    Atrophy is volume loss: a patient's region occupies less space than the
    template's, and VBM sees it through the Jacobian of the normalisation.
    The subject → MNI map ``x + u(x)`` must then expand the region by
    ``1 / (1 - loss)``, so ``u`` is the gradient of a potential whose
    Laplacian is that expansion (Poisson, solved with FFTs on a padded
    lattice): curl-free, and divergence-free outside the region, so the
    tissue around it moves in without changing volume (sulci and ventricles
    widen, as in real atrophy).

    Parameters
    ----------
    loss : (x, y, z) array
        Fractional volume loss (< 1; negative values grow the tissue), e.g. the
        effect maps each times its GM change and the patient's severity.
    grid_affine : 4x4 of the lattice (isotropic)
    pad : lattice voxels of zero padding on every side

    Returns
    -------
    u : (3, x, y, z) displacement in mm
    modulation : (x, y, z) ``1 / det(I + grad u)``: the volume fraction the
        subject keeps at each MNI voxel (what a modulated GM map measures)
    """
    w = np.asarray(loss, dtype=np.float64)
    if w.ndim != 3 or not np.isfinite(w).all() or w.max() >= 1:
        raise ValueError(f"loss must be a finite 3-D fraction below 1, got shape {w.shape}, max {np.nanmax(w):.3f}")
    step = float(voxel_sizes(np.asarray(grid_affine, dtype=float))[0])
    source = np.pad(1.0 / (1.0 - w) - 1.0, pad)
    k = np.meshgrid(*[2 * np.pi * np.fft.fftfreq(n, d=step) for n in source.shape], indexing="ij", sparse=True)
    k2 = k[0] ** 2 + k[1] ** 2 + k[2] ** 2
    k2[0, 0, 0] = 1.0
    phi_k = -np.fft.fftn(source) / k2
    phi_k[0, 0, 0] = 0.0
    core = tuple(slice(pad, pad + n) for n in w.shape)
    u = np.stack([np.fft.ifftn(1j * kk * phi_k).real[core] for kk in k])
    grad = np.stack([np.stack(np.gradient(u[a], step), axis=0) for a in range(3)])  # grad[a, b] = du_a/dx_b
    jac = np.linalg.det(np.moveaxis(grad, (0, 1), (-2, -1)) + np.eye(3))
    return u.astype(np.float32), (1.0 / np.clip(jac, 1e-3, None)).astype(np.float32)


def _exponentiate(velocity: np.ndarray, grid_affine: np.ndarray, squarings: int = 6) -> np.ndarray:
    """Displacement of the unit-time flow of a stationary velocity field (scaling and squaring)."""
    points = _world_coords(velocity.shape[1:], grid_affine).reshape(3, -1).astype(np.float64)
    disp = velocity.reshape(3, -1).astype(np.float64) / 2**squarings
    for _ in range(squarings):
        field = disp.reshape(velocity.shape)
        disp = disp + _sample_field(field, grid_affine, points + disp, order=1)
    return disp.reshape(velocity.shape)


def _placement(rng, spec: SimulationSpec, head_scale: float) -> Placement:
    # Scanner head of size head_scale × MNI → MNI divides by the scale.
    scale = head_scale * (1 + 0.02 * rng.standard_normal(3))
    rot = _rotation(np.deg2rad(rng.uniform(-spec.rotation_deg, spec.rotation_deg, 3)))
    a = np.eye(4)
    a[:3, :3] = np.diag(1.0 / scale) @ rot
    a[:3, 3] = rng.uniform(-spec.shift_mm, spec.shift_mm, 3) + np.array([0.0, -18.0, 18.0])
    # Smooth random warp on a 6 mm lattice that changes shape but not volume
    # (regional volume differences are drawn separately, see volume_sd): the
    # flow of a divergence-free velocity, the curl of a smoothed white-noise
    # vector potential.  A divergence-free *displacement* would not do: with
    # strains of ~25 % its second-order terms change local volume by ~12 %.
    step = 6.0
    lattice = tuple(int(np.ceil(e / step)) + 1 for e in (200, 240, 200))
    g_aff = np.diag([step, step, step, 1.0])
    g_aff[:3, 3] = (-100.0, -136.0, -80.0)
    sigma = spec.warp_smooth_mm / 2.3548 / step
    potential = [ndimage.gaussian_filter(rng.standard_normal(lattice), sigma, mode="wrap") for _ in range(3)]
    grads = [np.gradient(a, step) for a in potential]  # grads[a][b] = dA_a/dx_b
    velocity = np.stack([grads[2][1] - grads[1][2], grads[0][2] - grads[2][0], grads[1][0] - grads[0][1]])
    velocity *= spec.warp_mm / max(float(np.sqrt(np.mean(velocity**2))), 1e-12)
    disp = _exponentiate(velocity, g_aff)
    motion = _rigid(rng, spec.motion_deg, spec.motion_mm)
    return Placement(a, motion, g_aff, disp.astype(np.float32))
