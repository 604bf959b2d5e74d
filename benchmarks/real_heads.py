"""The anatomy on every real T1w head the project has, and on the same heads moved and resampled.

Run by hand:  .venv/bin/python benchmarks/real_heads.py [--working-voxel MM] [--mni-voxel MM]
                  [--heads NAME ...] [--variants] [--out DIR] [--json FILE]

Heads: the three of tests/data/real-t1 (Siemens Prisma adult, Philips 0.7 mm TFE adult, a
3-year-old on a Siemens Skyra) and the real Philips volunteer (tests/data/real-philips-3t).
For each: the anatomy's wall time (one thread), TIV, GM share, the brain extraction's volume, the
QC measures and verdict, and the Dice of the subject's brain mask carried to MNI against the
template's brain mask.  With --variants, each head is also moved (20 mm, 15°) and resampled to
0.5 × 1 × 1 mm and to 2 mm, and TIV and GM are compared with the head as scanned.  The move is
done twice: by whole voxels and an oblique grid (the image as sharp as scanned, as a second scan
would be), and by cubic resampling (which blurs it).  Writes the
segmentation drawn over each T1 into --out, and every figure with the command, commit and
machine into --json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from heads import ADULTS, CHILD, load_t1, moved_and_resampled, moved_in_field_of_view  # noqa: E402

from ferritin.cohort.bids import discover, load_subject  # noqa: E402
from ferritin.cohort.dicom import convert_dicom  # noqa: E402
from ferritin.cohort.templates import load_template  # noqa: E402
from ferritin.engine.anat import AnatParams, process_anatomy, sample_at  # noqa: E402
from ferritin.engine.qc import QCCriteria, qc_failures  # noqa: E402
from ferritin.engine.report.figures import subject_qc  # noqa: E402

PHILIPS_DICOM = ROOT / "tests" / "data" / "real-philips-3t" / "dicom"
VARIANTS = {  # name: (voxel size, shift mm, rotation degrees about x, y, z); voxel size None: not resampled
    "moved 20 mm, rotated 15°": (None, (20.0, -12.0, 10.0), (15.0, -10.0, 8.0)),
    "moved and rotated, resampled to 1 mm": (1.0, (20.0, -12.0, 10.0), (15.0, -10.0, 8.0)),
    "0.5 × 1 × 1 mm": ((0.5, 1.0, 1.0), (0.0, 0.0, 0.0), (0.0, 0.0, 0.0)),
    "2 mm": (2.0, (0.0, 0.0, 0.0), (0.0, 0.0, 0.0)),
}


def philips_volunteer():
    with tempfile.TemporaryDirectory() as tmp:
        convert_dicom(PHILIPS_DICOM, Path(tmp) / "bids", "01")
        images = load_subject(discover(Path(tmp) / "bids").subjects["sub-01"])
    return images.t1w, images.t1w_affine


def measure(t1, affine, template, params) -> tuple[dict, object]:
    t0 = time.perf_counter()
    gre = t1[::4, ::4, ::4]  # the anatomy coregisters a GRE; these heads have none, the T1 stands in
    r = process_anatomy(t1, affine, gre, affine @ np.diag([4, 4, 4, 1]), template, params)
    seconds = time.perf_counter() - t0
    warped = sample_at(r.brain_mask.astype(np.float32), affine, r.t1_points, order=1, cval=0.0) > 0.5
    tb = template.brain_mask
    qc = {"tiv_ml": r.tiv_ml, "gm_ml": r.gm_ml, "qc_gm_corr": r.qc_gm_corr, "qc_t1_corr": r.qc_t1_corr,
          "qc_brain_top_gap_mm": r.qc_brain_top_gap_mm}
    row = {"seconds": round(seconds, 1), "tiv_ml": round(r.tiv_ml, 1), "gm_ml": round(r.gm_ml, 1),
           "gm_share": round(r.gm_ml / r.tiv_ml, 3),
           "extraction_ml": (r.preparation.get("brain_extraction") or {}).get("volume_ml"),
           "brain_dice_mni": round(float(2 * (warped & tb).sum() / (warped.sum() + tb.sum())), 3),
           "qc_gm_corr": round(r.qc_gm_corr, 3), "qc_t1_corr": round(r.qc_t1_corr, 3),
           "qc_brain_top_gap_mm": round(r.qc_brain_top_gap_mm, 1),
           "qc_failures": qc_failures(qc, QCCriteria()), "attempts": r.preparation.get("attempts", 1),
           "steps": {k: round(v, 1) for k, v in (r.seconds or {}).items()}}
    return row, r


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--working-voxel", type=float, default=None, help="resample each T1 to this (mm); default: as is")
    ap.add_argument("--mni-voxel", type=float, default=2.0)
    ap.add_argument("--heads", nargs="*", default=[*ADULTS, CHILD, "philips-volunteer"])
    ap.add_argument("--variants", action="store_true", help="also the moved and resampled heads")
    ap.add_argument("--out", type=Path, default=Path("real-heads-figures"))
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    template = load_template(args.mni_voxel)
    params = AnatParams(working_voxel_mm=args.working_voxel)
    rows = []
    for head in args.heads:
        t1, affine = philips_volunteer() if head == "philips-volunteer" else load_t1(head)
        row, r = measure(t1, affine, template, params)
        rows.append({"head": head, "variant": "as scanned", **row})
        print(json.dumps(rows[-1]), flush=True)
        verdict = "excluded: " + "; ".join(row["qc_failures"]) if row["qc_failures"] else "included"
        (args.out / f"{head}.png").write_bytes(subject_qc(head, t1, affine, r.gm, r.wm, r.t1_mni, template.grid.affine,
                                                          template.brain_mask, None, None, None,
                                                          brain_centre_mm=r.preparation["brain_centre_mm"],
                                                          verdict=verdict))
        if not args.variants:
            continue
        for name, (voxel, shift, angles) in VARIANTS.items():
            moved, moved_affine = (moved_in_field_of_view(t1, affine, shift, angles) if voxel is None
                                   else moved_and_resampled(t1, affine, voxel, shift, angles))
            again, _ = measure(moved, moved_affine, template, params)
            again["tiv_change"] = round(again["tiv_ml"] / row["tiv_ml"] - 1, 4)
            again["gm_change"] = round(again["gm_ml"] / row["gm_ml"] - 1, 4)
            rows.append({"head": head, "variant": name, **again})
            print(json.dumps(rows[-1]), flush=True)
    if args.json:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True).stdout.strip()
        args.json.write_text(json.dumps({"command": " ".join(["benchmarks/real_heads.py", *sys.argv[1:]]),
                                         "commit": commit, "machine": f"{platform.machine()}, {os.cpu_count()} cores",
                                         "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
