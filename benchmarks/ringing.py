"""Truncation ringing: the per-axis evidence, and what each choice of ``qsm.ringing`` does to real χ.

    python benchmarks/ringing.py [--json FILE] [--figure FILE]

1. ``ringing_evidence`` (near-edge and far share of the oscillation that sub-voxel
   shifts remove, per axis, and the axes named) on the real Philips volunteer
   (tests/data/real-philips-3t) and on simulated subjects with and without k-space
   truncation at 3 and 2 mm (two subjects each).
2. On the volunteer, χ with ``ringing: none``, ``auto`` (the default) and ``taper``,
   the QSM mask bounded by the T1's brain (its anatomy at a 2 mm working voxel):
   the high-frequency share of χ (stripes and rings; truth-free) and a picture of
   three planes of each (``--figure``).

3. ``--alternatives``: filters applied to the images before ``reconstruct_qsm`` with
   ``ringing: none`` (taper or unring, everywhere, only near strong edges, or everywhere
   but there), scored on three simulated subjects with truncation and without (3 mm, six
   echoes; deep-grey error and NRMSE as ``benchmarks/qsm_accuracy.py``) and on the volunteer.

The chain's own choices on the simulated cohorts are measured by
``benchmarks/qsm_accuracy.py --set ringing=...`` (deep-grey error, NRMSE).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import scipy.fft as sfft
from scipy import ndimage

from ferritin.cohort.bids import discover, load_subject
from ferritin.cohort.dicom import convert_dicom
from ferritin.cohort.simulate import preset, sample_participants, simulate_subject
from ferritin.cohort.templates import load_template
from ferritin.engine.anat import AnatParams, process_anatomy, t1_brain_on_gre
from ferritin.engine.qsm.chain import QSMParams, reconstruct_qsm
from ferritin.engine.qsm.metrics import high_frequency_share, nrmse
from ferritin.engine.qsm.ringing import _unring_axis, ringing_evidence, tukey_taper

ROOT = Path(__file__).resolve().parents[1]
PHILIPS_DICOM = ROOT / "tests" / "data" / "real-philips-3t" / "dicom"


def simulated_evidence() -> list[dict]:
    rows = []
    for truncation in (1, 2):
        for voxel in (3.0, 2.0):
            spec = preset("tiny", voxel_size=voxel, n_echoes=2, kspace_truncation=truncation)
            table = sample_participants(spec)
            for i in (0, 1):
                t = simulate_subject(spec, table.iloc[i].to_dict(), i)
                ev = ringing_evidence(t.mag, t.phase).to_dict()
                rows.append({"data": f"simulated, truncation {truncation}, {voxel:g} mm, subject {i}", **ev})
                print(f"{rows[-1]['data']:45s} axes {ev['axes']}  near {ev['near_edge']}  far {ev['far_from_edge']}",
                      flush=True)
    return rows


def volunteer(figure: Path | None, compare: bool = False) -> tuple[dict, dict]:
    with tempfile.TemporaryDirectory() as tmp:
        convert_dicom(PHILIPS_DICOM, Path(tmp) / "bids", "01")
        im = load_subject(discover(Path(tmp) / "bids").subjects["sub-01"])
    ev = ringing_evidence(im.mag, im.phase).to_dict()
    print(f"{'Philips volunteer':45s} axes {ev['axes']}  near {ev['near_edge']}  far {ev['far_from_edge']}")
    anat = process_anatomy(im.t1w, im.t1w_affine, im.mag[0], im.gre_affine, load_template(3.0),
                           AnatParams(working_voxel_mm=2.0))
    brain = t1_brain_on_gre(anat.brain_mask, im.t1w_affine, anat.gre_to_t1, im.mag.shape[1:], im.gre_affine)
    shares, maps = {}, {}
    for choice in ("none", "auto", "taper"):
        t0 = time.perf_counter()
        chain = {}
        chi, mask = reconstruct_qsm(im.mag, im.phase, im.echo_times, im.gre_affine, im.b0,
                                    replace(QSMParams(), ringing=choice), brain=brain, provenance=chain)
        shares[choice] = {"high_frequency_share": round(high_frequency_share(chi, mask), 3),
                          "tapered_axes": chain["tapered_axes"], "seconds": round(time.perf_counter() - t0, 1)}
        maps[choice] = np.where(mask, chi, np.nan)
        print(f"  ringing: {choice:5s} high-frequency share {shares[choice]['high_frequency_share']:.3f}  "
              f"axes tapered {chain['tapered_axes']}  ({shares[choice]['seconds']} s)", flush=True)
    if figure is not None:
        _draw(maps, figure)
    if compare:
        shares["alternatives"] = alternatives(im, brain)
    return {"data": "Philips volunteer", **ev}, shares


#: name: (filter, where, outer fraction): where > 0 filters within that many voxels of a strong edge
#: (fading out over as many again), where < 0 everywhere but there, 0 everywhere
ALTERNATIVES = {"taper": ("taper", 0, 0.3), "taper near edges (3)": ("taper", 3, 0.3),
                "taper near edges (6)": ("taper", 6, 0.3), "taper but near edges (2)": ("taper", -2, 0.3),
                "taper 15 %": ("taper", 0, 0.15), "unring": ("unring", 0, 0.0),
                "unring near edges (3)": ("unring", 3, 0.0)}


def _edge_weight(magnitude: np.ndarray, reach: int) -> np.ndarray:
    bright = np.percentile(magnitude, 99)
    edges = np.zeros(magnitude.shape, bool)
    for axis in range(3):
        edges |= np.abs(np.diff(magnitude, axis=axis, append=np.take(magnitude, [0], axis=axis))) > 0.3 * bright
    distance = ndimage.distance_transform_edt(~edges)
    return np.clip(1 - (distance - reach) / reach, 0, 1)


def prefiltered(mag: np.ndarray, phase: np.ndarray, kind: str, where: int, fraction: float):
    """``mag``, ``phase`` (echo, x, y, z) filtered by ``kind`` (taper or unring) everywhere or by the edges."""
    weight = 1.0 if where == 0 else _edge_weight(mag[0], abs(where))
    if where < 0:
        weight = 1.0 - weight
    out_m, out_p = [], []
    for m, p in zip(mag, phase):
        z = m * np.exp(1j * p.astype(np.float64))
        f = z.copy()
        for axis in range(3):
            if kind == "taper":
                window = tukey_taper(z.shape[axis], fraction).reshape([-1 if a == axis else 1 for a in range(3)])
                f = sfft.ifft(sfft.fft(f, axis=axis) * window, axis=axis)
            else:
                f = _unring_axis(f, axis, 10, 3)
        z = z + weight * (f - z)
        out_m.append(np.abs(z).astype(np.float32))
        out_p.append(np.angle(z).astype(np.float32))
    return np.stack(out_m), np.stack(out_p)


def alternatives(images, brain) -> dict:
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from qsm_accuracy import deep_grey_error, nuclei_labels

    none = replace(QSMParams(), ringing="none")
    out = {}
    for truncation in (2, 1):
        spec = preset("tiny", voxel_size=3.0, n_echoes=6, kspace_truncation=truncation)
        table = sample_participants(spec)
        scores = {name: [] for name in ["none", *ALTERNATIVES]}
        for i in (0, 1, 2):
            t = simulate_subject(spec, table.iloc[i].to_dict(), i)
            truth = t.brain_mask_native.astype(bool)
            labels, nuclei = nuclei_labels(t, 3.0)
            for name in scores:
                mag, phase = (t.mag, t.phase) if name == "none" else prefiltered(t.mag, t.phase, *ALTERNATIVES[name])
                chi, mask = reconstruct_qsm(mag, phase, t.echo_times, t.gre_affine, spec.b0, none)
                both = mask & truth
                scores[name].append((nrmse(chi, t.chi_native, both), deep_grey_error(chi, t, both, labels, nuclei)[0]))
        for name, rows in scores.items():
            med = np.median(rows, axis=0)
            out[f"truncation {truncation}: {name}"] = {"nrmse_pct": round(float(med[0]), 1),
                                                        "deep_grey_ppm": round(float(med[1]), 4)}
            print(f"  truncation {truncation} {name:26s} NRMSE {med[0]:5.1f} %  deep-grey {med[1]:.4f} ppm", flush=True)
    for name, how in ALTERNATIVES.items():
        mag, phase = prefiltered(images.mag, images.phase, *how)
        chi, mask = reconstruct_qsm(mag, phase, images.echo_times, images.gre_affine, images.b0, none, brain=brain)
        out[f"Philips: {name}"] = {"high_frequency_share": round(high_frequency_share(chi, mask), 3)}
        print(f"  Philips {name:26s} high-frequency share {out[f'Philips: {name}']['high_frequency_share']:.3f}")
    return out


def _draw(maps: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(maps), 3, figsize=(9, 3.1 * len(maps)))
    for row, (choice, chi) in zip(axes, maps.items()):
        centre = [int(np.nanmedian(np.nonzero(np.isfinite(chi))[a])) for a in range(3)]
        for ax, plane, name in zip(row, (np.s_[centre[0]], np.s_[:, centre[1]], np.s_[:, :, centre[2]]),
                                   ("first axis", "second axis", "third axis")):
            ax.imshow(np.nan_to_num(chi[plane]).T, origin="lower", cmap="gray", vmin=-0.15, vmax=0.15)
            ax.set_title(f"ringing: {choice}, across the {name}", fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path, help="write the figures with the command, commit and machine here")
    ap.add_argument("--figure", type=Path, help="draw the volunteer's χ with each choice here (PNG)")
    ap.add_argument("--alternatives", action="store_true", help="score other filters too (about 15 minutes)")
    args = ap.parse_args()
    evidence = simulated_evidence()
    real, shares = volunteer(args.figure, args.alternatives)
    if args.json:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True).stdout.strip()
        command = "python benchmarks/ringing.py" + (" --alternatives" if args.alternatives else "")
        args.json.write_text(json.dumps({"command": command, "commit": commit,
                                         "machine": f"{platform.machine()}, {os.cpu_count()} cores",
                                         "evidence": [real, *evidence], "volunteer_chi": shares}, indent=2))


if __name__ == "__main__":
    main()
