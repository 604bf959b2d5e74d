"""One subject's scans: T1w and multi-echo GRE from its anatomy, with noise, truncation and digitisation."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.fft as sfft
from scipy import ndimage

from ..dipole import GAMMA_HZ_PER_T, b0_direction, forward_field
from ..templates import Template, load_template
from .anatomy import _place_volume_change, subject_mni_maps, volume_fraction
from .geometry import Placement, _grid_affine, _placement, _rotation, _world_coords
from .spec import SimulationSpec
from .tissue import ADC_LEVELS, ANTIALIAS_SIGMA_VOX, CHI, PD, PHASE_STEP, R2S, R2S_PER_PPM, T1W

__all__ = ["SubjectTruth", "simulate_subject"]

@dataclass
class SubjectTruth:
    """Images and ground truth of one simulated subject."""

    subject: str
    row: dict
    mag: np.ndarray  # (echo, i, j, k)
    phase: np.ndarray
    gre_affine: np.ndarray
    t1w: np.ndarray
    t1w_affine: np.ndarray
    echo_times: np.ndarray
    chi_native: np.ndarray  # true brain chi on the GRE grid (ppm)
    brain_mask_native: np.ndarray
    local_field_ppm: np.ndarray
    total_field_ppm: np.ndarray
    gm_t1: np.ndarray
    wm_t1: np.ndarray
    csf_t1: np.ndarray
    mni_to_scanner: np.ndarray  # displacement-free: T1 scanner coords of every MNI voxel (3, ...)
    mni: dict
    tiv_ml: float
    placement: Placement
    mag_step: float  # the magnitude series' slope: mag holds multiples of it
    t1w_step: float


def _pull(maps: dict, names, template: Template, mni_xyz: np.ndarray, order: int = 1) -> dict:
    inv = np.linalg.inv(template.grid.affine)
    ijk = np.einsum("ab,b...->a...", inv[:3, :3], mni_xyz) + inv[:3, 3].reshape(3, 1, 1, 1)
    return {n: ndimage.map_coordinates(maps[n], ijk, order=order, mode="constant", cval=0.0).astype(np.float32)
            for n in names}


def _pull_air(maps: dict, template: Template, mni_xyz: np.ndarray) -> np.ndarray:
    inv = np.linalg.inv(template.grid.affine)
    ijk = np.einsum("ab,b...->a...", inv[:3, :3], mni_xyz) + inv[:3, 3].reshape(3, 1, 1, 1)
    return ndimage.map_coordinates(maps["air"], ijk, order=1, mode="constant", cval=1.0).astype(np.float32)


def _series_step(values: np.ndarray) -> float:
    """The slope that maps a series' largest value to the top 12-bit code (a float32, as NIfTI stores it)."""
    return float(np.float32(float(values.max()) / ADC_LEVELS))


def _digitised(values: np.ndarray, step: float) -> np.ndarray:
    """``values`` rounded to multiples of ``step``: what reading the scanner's scaled integers gives."""
    return (np.rint(values / step) * step).astype(np.float32)


def _digitised_phase(phase: np.ndarray) -> np.ndarray:
    """Phase rounded to 12-bit codes -4096..4095 of ``PHASE_STEP``; +pi wraps to -pi like any angle."""
    codes = np.rint(phase / PHASE_STEP)
    codes[codes >= 4096] -= 8192
    return (codes * PHASE_STEP).astype(np.float32)


def _bias_field(shape, rng, amplitude=0.15) -> np.ndarray:
    lat = [np.linspace(-1, 1, n) for n in shape]
    x, y, z = np.meshgrid(*lat, indexing="ij", sparse=True)
    c = rng.normal(0, 1, 6)
    f = c[0] * x + c[1] * y + c[2] * z + 0.5 * (c[3] * x * y + c[4] * y * z + c[5] * x * z)
    f = f / max(np.abs(f).max(), 1e-9)
    return (1 + amplitude * f).astype(np.float32)


def _tissue_relaxation(g: dict, air: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Proton density and R2* (1/s) of every GRE voxel from its tissue shares."""
    pd_map = (PD["gm"] * g["gm"] + PD["wm"] * g["wm"] + PD["csf"] * (g["csf"] + g["rim"]) + PD["scalp"] * g["scalp"]
              + PD["skull"] * g["skull"]) * (1 - air) * (1 - g["sinus"])
    denom = np.maximum(g["gm"] + g["wm"] + g["csf"] + g["rim"] + g["scalp"] + g["skull"], 1e-3)
    r2s = (R2S["gm"] * g["gm"] + R2S["wm"] * g["wm"] + R2S["csf"] * (g["csf"] + g["rim"]) + R2S["scalp"] * g["scalp"]
           + R2S["skull"] * g["skull"]) / denom
    return pd_map, r2s + R2S_PER_PPM * np.clip(g["chi_brain"], 0, None)


def _gre_echoes(g: dict, air, coil, phi0, omega, tes):
    """Noise-free complex GRE signal of each echo time."""
    pd_map, r2s = _tissue_relaxation(g, air)
    for te in tes:
        yield coil * pd_map * np.exp(-r2s * te) * np.exp(1j * (phi0 + omega * te))


def _upsample(x: np.ndarray, f: int) -> np.ndarray:
    """A smooth map on the grid ``f`` times finer whose voxel ``f*i`` lies on voxel ``i``."""
    ijk = np.indices(tuple(n * f for n in x.shape), dtype=np.float32) / np.float32(f)
    return ndimage.map_coordinates(x, ijk, order=1, mode="nearest").astype(x.dtype)


def _acquired_matrix(s_fine: np.ndarray, shape, f: int) -> np.ndarray:
    """The image a scanner reconstructs: the fine object's k-space cropped to the acquired matrix."""
    k = sfft.fftshift(sfft.fftn(s_fine))
    kept = tuple(slice(n * f // 2 - n // 2, n * f // 2 - n // 2 + n) for n in shape)
    return sfft.ifftn(sfft.ifftshift(k[kept])) / f**3


def simulate_subject(spec: SimulationSpec, row: dict, index: int) -> SubjectTruth:
    """Simulate one subject (deterministic for ``spec.seed`` and ``index``)."""
    rng = np.random.default_rng([spec.seed, 1, index])
    template = load_template(spec.voxel_size)
    maps = subject_mni_maps(template, spec, row, rng)
    place = _placement(rng, spec, row["head_scale"])
    place = _place_volume_change(place, maps["atrophy"], template, rng, spec)
    vs = spec.voxel_size
    # --- T1w grid (axial, slightly rotated and shifted) --------------------
    t1_rot = _rotation(np.deg2rad(rng.uniform(-3, 3, 3)))
    t1_shape, t1_aff = _grid_affine((230.0, 240.0, 200.0), vs, t1_rot, center=rng.uniform(-5, 5, 3) + (0, -15, 15))
    t1_mni = place.to_mni(_world_coords(t1_shape, t1_aff))
    tis = _pull(maps, ("gm", "wm", "csf", "skull", "scalp", "rim"), template, t1_mni)
    t1_air = _pull_air(maps, template, t1_mni)
    signal = (T1W["gm"] * tis["gm"] + T1W["wm"] * tis["wm"] + T1W["csf"] * (tis["csf"] + tis["rim"])
              + T1W["scalp"] * tis["scalp"] + T1W["skull"] * tis["skull"]) * (1 - t1_air)
    signal = signal * _bias_field(t1_shape, rng)
    sigma_t1 = T1W["wm"] / spec.t1_snr
    noisy = np.hypot(signal + sigma_t1 * rng.standard_normal(t1_shape), sigma_t1 * rng.standard_normal(t1_shape))
    t1w = (noisy * 1000).astype(np.float32)
    t1w_step = _series_step(t1w)
    t1w = _digitised(t1w, t1w_step)
    tiv = float((tis["gm"] + tis["wm"] + tis["csf"]).sum() * vs**3 / 1000.0)
    # --- GRE grid (oblique slab) --------------------------------------------
    tilt = np.deg2rad(rng.uniform(-spec.oblique_deg, spec.oblique_deg))
    gre_rot = _rotation((tilt, 0.0, 0.0))
    gre_shape, gre_aff = _grid_affine(spec.fov_mm, vs, gre_rot, center=rng.uniform(-4, 4, 3) + (0, -15, 18))
    gre_mni = place.to_mni(_world_coords(gre_shape, gre_aff), gre=True)
    g = _pull(maps, ("gm", "wm", "csf", "skull", "scalp", "rim", "chi_brain", "chi_full", "sinus"), template, gre_mni)
    air = np.clip(_pull_air(maps, template, gre_mni), 0, 1)
    tissue = np.clip(g["gm"] + g["wm"] + g["csf"], 0, 1)
    brain = tissue > 0.5
    chi_full = g["chi_full"] + CHI["air"] * air
    chi_brain = np.where(brain, g["chi_brain"], 0.0).astype(np.float32)
    b0dir = b0_direction(gre_aff)
    voxel = (vs, vs, vs)
    # The air outside the field of view continues indefinitely; referencing chi
    # to air makes the zero padding of the FFT physically right (a uniform
    # medium creates no field), so no artificial edge of the FOV appears.
    # The scanner samples a continuous field.  The FFT field of a voxelised
    # air/bone boundary rings (Gibbs) through the whole brain at a level
    # comparable to the tissue's own field, so sources outside the brain are
    # anti-aliased (Gaussian, 0.7 voxel) first; the brain is left exact and
    # its boundary untouched, so the background stays harmonic inside it.
    outside = np.where(brain, CHI["csf"], chi_full) - CHI["air"]
    outside = ndimage.gaussian_filter(outside, ANTIALIAS_SIGMA_VOX)
    source = np.where(brain, chi_brain - CHI["air"], outside)
    total = forward_field(source, voxel, b0dir).astype(np.float32)
    local = forward_field(chi_brain, voxel, b0dir).astype(np.float32)
    tes = spec.echo_times
    # Receiver phase offset: smooth, echo-independent.
    lat = [np.linspace(-1, 1, n) for n in gre_shape]
    x, y, z = np.meshgrid(*lat, indexing="ij", sparse=True)
    c = rng.uniform(-1, 1, 4)
    phi0 = (np.pi * c[0] + 0.8 * (c[1] * x + c[2] * y + c[3] * z)).astype(np.float32)
    coil = _bias_field(gre_shape, rng, amplitude=0.2)
    omega = 2 * np.pi * GAMMA_HZ_PER_T * spec.b0 * 1e-6 * total  # rad/s
    sigma = float(PD["wm"] * np.exp(-R2S["wm"] * tes[0])) / (spec.snr * vs**3)
    f = int(spec.kspace_truncation)
    if f == 1:
        echoes = _gre_echoes(g, air, coil, phi0, omega, tes)
    else:
        fine_shape = tuple(n * f for n in gre_shape)
        fine_aff = gre_aff.copy()
        fine_aff[:3, :3] /= f  # fine voxel f*i lies on acquired voxel i
        fine_mni = place.to_mni(_world_coords(fine_shape, fine_aff), gre=True)
        g_fine = _pull(maps, ("gm", "wm", "csf", "skull", "scalp", "rim", "sinus", "chi_brain"), template, fine_mni)
        air_fine = (_pull_air(maps, template, fine_mni) > 0.5).astype(np.float32)  # skin is a sharp edge
        del fine_mni
        fine = _gre_echoes(g_fine, air_fine, _upsample(coil, f), _upsample(phi0, f), _upsample(omega, f), tes)
        echoes = (_acquired_matrix(s_fine, gre_shape, f) for s_fine in fine)
    mags, phases = [], []
    for s_te in echoes:
        s_te = s_te + sigma * (rng.standard_normal(gre_shape) + 1j * rng.standard_normal(gre_shape))
        mags.append(np.abs(s_te).astype(np.float32))
        phases.append(_digitised_phase(np.angle(s_te)))
    mag = np.stack(mags) * np.float32(1000)
    mag_step = _series_step(mag)
    mag = _digitised(mag, mag_step)
    phase = np.stack(phases)
    mni = {k: maps[k] for k in ("gm", "wm", "csf", "chi_brain")}
    # What VBM's modulated GM should find: the template's GM carried back by
    # the subject's whole volume change, head size and anatomy included.
    mni["gm_mod"] = maps["gm"] * volume_fraction(place, template)
    return SubjectTruth(
        subject=row["participant_id"], row=row, mag=mag, phase=phase, gre_affine=gre_aff, t1w=t1w,
        t1w_affine=t1_aff, echo_times=tes, chi_native=chi_brain, brain_mask_native=brain.astype(np.uint8),
        local_field_ppm=np.where(brain, local, 0).astype(np.float32), total_field_ppm=total,
        gm_t1=tis["gm"], wm_t1=tis["wm"], csf_t1=tis["csf"], mni_to_scanner=np.zeros(0), mni=mni, tiv_ml=tiv,
        placement=place, mag_step=mag_step, t1w_step=t1w_step,
    )
