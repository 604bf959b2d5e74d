"""Per-stage seconds and peak memory of the QSM chain on a full-size subject,
next to a straightforward numpy reference implementation, in the same command.

Run by hand:  .venv/bin/python benchmarks/qsm.py [--shape 256 256 150] [--echoes 12] [--inversion tv]
                  [--no-reference]

The stages run on the whole field of view, as the chain did before it worked on the mask's bounding
box; ``reconstruct_qsm`` (the chain as the pipeline runs it, default parameters: k-space taper, the
outlier passes that repeat V-SHARP) follows on the same phantom.

Data: a 1 mm head phantom (ellipsoidal brain with smooth texture, iron-rich
nuclei, veins, an air-filled sinus outside the brain), its field by the
dipole model, 12 echoes of wrapped phase with noise and T2* magnitude.
Peak memory is the tracemalloc peak of numpy's allocations within each stage.

The reference is what one would write first: numpy.fft in float64, every
echo unwrapped with the Laplacian, an unweighted echo fit, V-SHARP with one
FFT pair per radius, TKD/TV with numpy.fft.
"""

from __future__ import annotations

import argparse
import resource
import time
import tracemalloc

import numpy as np
from scipy import ndimage

from ferritin.cohort.dipole import dipole_kernel, forward_field
from ferritin.engine.qsm.background import vsharp
from ferritin.engine.qsm.chain import QSMParams, reconstruct_qsm
from ferritin.engine.qsm.inversion import star_qsm, tkd, tv_admm
from ferritin.engine.qsm.mask import brain_mask
from ferritin.engine.qsm.unwrap import combine_echoes, field_to_ppm

GAMMA = 42.577478518e6


def phantom(shape, n_echoes, seed=0):
    rng = np.random.default_rng(seed)
    c = (np.asarray(shape) - 1) / 2
    k = min(shape[0] / 256, shape[1] / 256, shape[2] / 150)  # geometry scales with the field of view
    x, y, z = np.ogrid[: shape[0], : shape[1], : shape[2]]
    x, y, z = c[0] + (x - c[0]) / k, c[1] + (y - c[1]) / k, c[2] + (z - c[2]) / k
    r = np.sqrt(((x - c[0]) / 80) ** 2 + ((y - c[1]) / 100) ** 2 + ((z - c[2]) / 60) ** 2)
    brain = r < 1
    head = r < 1.12
    tex = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), 3)
    chi = np.where(brain, 0.01 * tex / tex.std(), 0.0).astype(np.float32)
    for dx, dy, dz, rad, val in [(-20, 5, 0, 9, 0.12), (20, 5, 0, 9, 0.12), (-10, -15, 5, 7, 0.06), (10, -15, 5, 7, 0.06)]:
        chi[(x - c[0] - dx) ** 2 + (y - c[1] - dy) ** 2 + (z - c[2] - dz) ** 2 < rad**2] = val
    chi[(np.abs(x - c[0]) < 1.5) & (np.abs(y - c[1] + 60) < 30) & (np.abs(z - c[2] - 40) < 1.5)] = 0.4  # a vein
    sinus = (x - c[0]) ** 2 / 15**2 + (y - c[1] - 106) ** 2 / 8**2 + (z - c[2] + 30) ** 2 / 8**2 < 1
    chi_all = chi + np.where(sinus, 9.4, 0.0) + np.where(~head, 9.4, 0.0)  # air outside the head
    field = forward_field(np.where(head | sinus, chi_all, 0).astype(np.float64), pad_factor=1.3)
    te = 0.0021 + 0.0024 * np.arange(n_echoes)
    b0 = 3.0
    omega = 2 * np.pi * GAMMA * b0 * field * 1e-6
    mag = np.stack([np.where(head, 300.0, 5.0) * np.exp(-t / 0.04) for t in te]).astype(np.float32)
    phase = np.empty((n_echoes, *shape), np.float32)
    for e, t in enumerate(te):
        sig = mag[e] * np.exp(1j * (0.3 + omega * t))
        sig = sig + rng.normal(0, 4, shape) + 1j * rng.normal(0, 4, shape)
        phase[e] = np.angle(sig)
        mag[e] = np.abs(sig)
    return mag, phase, te, b0, chi, brain


# --- the straightforward reference ----------------------------------------------------------

def ref_laplacian_unwrap(p):
    k = [np.fft.fftfreq(n) for n in p.shape]
    kx, ky, kz = np.meshgrid(*k, indexing="ij")
    k2 = -4 * np.pi**2 * (kx**2 + ky**2 + kz**2)
    k2[0, 0, 0] = 1
    lap = np.cos(p) * np.fft.ifftn(k2 * np.fft.fftn(np.sin(p))).real - np.sin(p) * np.fft.ifftn(
        k2 * np.fft.fftn(np.cos(p))).real
    out = np.fft.ifftn(np.fft.fftn(lap) / k2).real
    return out


def ref_combine(phase, te):
    psi = np.stack([ref_laplacian_unwrap(p.astype(np.float64)) for p in phase])
    A = np.column_stack([np.ones_like(te), te])
    coef = np.linalg.lstsq(A, psi.reshape(len(te), -1), rcond=None)[0]
    return coef[1].reshape(phase.shape[1:])


def ref_vsharp(field, mask, radii):
    shape = field.shape
    c = [np.fft.fftfreq(n) * n for n in shape]
    X, Y, Z = np.meshgrid(*c, indexing="ij")
    R = np.sqrt(X**2 + Y**2 + Z**2)
    filtered = np.zeros(shape)
    done = np.zeros(shape, bool)
    for r in radii:
        s = (R <= r).astype(float)
        s /= s.sum()
        S = np.fft.fftn(s)
        inside = np.fft.ifftn(S * np.fft.fftn(mask.astype(float))).real > 1 - 1e-6
        hp = field * mask - np.fft.ifftn(S * np.fft.fftn(field * mask)).real
        new = inside & ~done
        filtered[new] = hp[new]
        done |= inside
        if r == radii[0]:
            S0 = S
    inv = np.where(np.abs(1 - S0) >= 0.05, 1 / np.where(np.abs(1 - S0) < 1e-12, 1, 1 - S0), 0)
    return np.fft.ifftn(inv * np.fft.fftn(filtered * done)).real * done, done


def ref_tkd(field, mask):
    D = dipole_kernel(field.shape)
    inv = np.where(np.abs(D) >= 0.15, 1 / np.where(D == 0, 1, D), np.sign(D) / 0.15)
    inv[0, 0, 0] = 0
    return np.fft.ifftn(inv * np.fft.fftn(field * mask)).real * mask


# --- measurement ----------------------------------------------------------------------------

def measure(name, fn, rows):
    tracemalloc.start()
    t0 = time.perf_counter()
    out = fn()
    dt = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rows.append((name, dt, peak / 2**30))
    print(f"  {name:34s} {dt:8.1f} s   peak {peak / 2**30:6.2f} GiB", flush=True)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", type=int, nargs=3, default=[256, 256, 150])
    ap.add_argument("--echoes", type=int, default=12)
    ap.add_argument("--inversion", default="tv", choices=["tkd", "tv", "star"])
    ap.add_argument("--no-reference", action="store_true", help="skip the numpy reference")
    args = ap.parse_args()
    shape = tuple(args.shape)
    print(f"phantom {shape} x {args.echoes} echoes at 1 mm ...", flush=True)
    mag, phase, te, b0, chi_true, brain = phantom(shape, args.echoes)
    vs = (1.0, 1.0, 1.0)
    radii = np.arange(12.0, 0.99, -1.0)
    print("ferritin (scipy.fft, exact path unwrapping of one echo-difference map, weighted fit):")
    ours = []
    mask = measure("brain mask", lambda: brain_mask(mag[0], vs), ours)
    omega = measure("echo combination (phase-difference)",
                    lambda: combine_echoes(phase, mag, te, vs, method="phase-difference", mask=mask, unwrapper="path"),
                    ours)
    total = field_to_ppm(omega, b0)
    local, lmask = measure("V-SHARP (12 -> 1 mm)", lambda: vsharp(total, mask, vs, radii_mm=radii), ours)
    inv = {"tkd": tkd, "tv": tv_admm, "star": star_qsm}[args.inversion]
    measure(f"dipole inversion ({args.inversion})", lambda: inv(local, lmask, vs), ours)
    print(f"stages on the whole field of view: {sum(r[1] for r in ours):.1f} s")
    chain = []
    measure("reconstruct_qsm (bounding box)",
            lambda: reconstruct_qsm(mag, phase, te, np.eye(4), b0, QSMParams(inversion=args.inversion)), chain)
    if args.no_reference:
        return
    print("numpy reference (numpy.fft float64, Laplacian unwrap of every echo, unweighted fit):")
    ref = []
    omega_r = measure("echo combination", lambda: ref_combine(phase, te), ref)
    local_r, lmask_r = measure("V-SHARP", lambda: ref_vsharp(field_to_ppm(omega_r, b0), mask, radii), ref)
    if args.inversion == "tkd":
        measure("dipole inversion (tkd)", lambda: ref_tkd(local_r, lmask_r), ref)
    else:
        print("  (no reference TV: the comparison is for the stages both have)")
    print()
    print(f"{'stage':36s} {'ferritin s':>10s} {'numpy s':>9s} {'ratio':>6s} {'ferritin GiB':>13s} {'numpy GiB':>10s}")
    pairs = [("echo combination", 1, 0), ("V-SHARP", 2, 1)] + ([("TKD", 3, 2)] if args.inversion == "tkd" else [])
    for name, i, j in pairs:
        print(f"{name:36s} {ours[i][1]:10.1f} {ref[j][1]:9.1f} {ref[j][1] / ours[i][1]:6.2f} {ours[i][2]:13.2f} "
              f"{ref[j][2]:10.2f}")
    print(f"whole chain (ferritin): {sum(r[1] for r in ours):.1f} s, largest stage peak {max(r[2] for r in ours):.2f} GiB;"
          f" process max RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")


if __name__ == "__main__":
    main()
