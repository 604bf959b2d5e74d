"""The participant level on the real Philips 3 T volunteer (tests/data/real-philips-3t), with figures.

Run by hand:  .venv/bin/python benchmarks/real_subject.py [--working-voxel MM] [--out DIR]

Converts the DICOM folder (ferritin convert), reconstructs χ, segments and normalises the T1 and
prints: seconds per stage, TIV and tissue volumes, the QC measures and verdict, the 1st-99th
percentile of χ in the QSM mask and the mean χ of deep-grey nuclei (AAL, through the subject's
own normalisation) against frontal white matter, the chain's decisions (ringing axes, effective
weight), R2* and its warning, and the deep-grey table (χ under each reference, R2*, modulated GM)
as the QSM stage computes it.  Writes the report's QC figure of the subject into --out.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from ferritin.cohort.bids import discover, load_subject
from ferritin.cohort.dicom import convert_dicom
from ferritin.cohort.templates import atlas_labels, load_template
from ferritin.engine.anat import AnatParams, chi_to_mni, process_anatomy, t1_brain_on_gre
from ferritin.engine.chi_reference import REFERENCES, reference_region, referenced
from ferritin.engine.nuclei import subject_nuclei
from ferritin.engine.qc import QCCriteria, qc_failures
from ferritin.engine.qsm.chain import QSMParams, reconstruct_qsm
from ferritin.engine.qsm.relaxometry import background_noise_sd, r2star_loglinear, r2star_warning
from ferritin.engine.report.figures import subject_qc

DICOM = Path(__file__).resolve().parents[1] / "tests" / "data" / "real-philips-3t" / "dicom"
NUCLEI = ("Pallidum", "Putamen", "Caudate", "Thalamus")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--working-voxel", type=float, default=None, help="resample the T1 to this (mm); default: as is")
    ap.add_argument("--mni-voxel", type=float, default=2.0)
    ap.add_argument("--out", type=Path, default=Path("real-subject-figures"))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        convert_dicom(DICOM, Path(tmp) / "bids", "01")
        images = load_subject(discover(Path(tmp) / "bids").subjects["sub-01"])
        t_convert = time.perf_counter() - t0
    template = load_template(args.mni_voxel)
    params = AnatParams(working_voxel_mm=args.working_voxel)
    r = process_anatomy(images.t1w, images.t1w_affine, images.mag[0], images.gre_affine, template, params)
    brain = t1_brain_on_gre(r.brain_mask, images.t1w_affine, r.gre_to_t1, images.mag.shape[1:], images.gre_affine)
    t0 = time.perf_counter()
    chain = {}
    chi, mask = reconstruct_qsm(images.mag, images.phase, images.echo_times, images.gre_affine, images.b0,
                                QSMParams(), brain=brain, provenance=chain)
    t_qsm = time.perf_counter() - t0
    r2star = r2star_loglinear(images.mag, images.echo_times, mask, noise_sd=background_noise_sd(images.mag[0]))
    chi_mni = chi_to_mni(chi, mask, images.gre_affine, r.gre_to_t1, r.t1_points)
    magnitude_only, magnitude_mask = reconstruct_qsm(images.mag, images.phase, images.echo_times, images.gre_affine,
                                                     images.b0, QSMParams())
    print(f"convert + load {t_convert:.1f} s, QSM {t_qsm:.1f} s, anatomy {sum(r.seconds.values()):.1f} s")
    for stage, sec in r.seconds.items():
        print(f"  {stage:36s} {sec:7.1f} s")
    print(f"T1 preparation: {r.preparation}")
    print(f"TIV {r.tiv_ml:.0f} ml; GM {r.gm_ml:.0f} ml ({100 * r.gm_ml / r.tiv_ml:.1f} % of TIV), "
          f"WM {r.wm_ml:.0f} ml, CSF {r.csf_ml:.0f} ml")
    measures = {"tiv_ml": r.tiv_ml, "gm_ml": r.gm_ml, "qc_gm_corr": r.qc_gm_corr, "qc_t1_corr": r.qc_t1_corr,
                "qc_brain_top_gap_mm": r.qc_brain_top_gap_mm}
    print(f"QC: GM corr {r.qc_gm_corr:.3f}, T1 corr {r.qc_t1_corr:.3f}, brain top {r.qc_brain_top_gap_mm:.0f} mm "
          f"below the head top; failures: {qc_failures(measures, QCCriteria()) or 'none'}")
    lo, hi = np.percentile(chi[mask], [1, 99])
    mlo, mhi = np.percentile(magnitude_only[magnitude_mask], [1, 99])
    print(f"chi 1st-99th percentile: {lo:+.3f} to {hi:+.3f} ppm in the QSM mask (bounded by the T1 brain, "
          f"{mask.sum() / brain.sum():.0%} of it after V-SHARP); magnitude mask alone {mlo:+.3f} to {mhi:+.3f} ppm")
    names = atlas_labels()["name"].to_dict()
    y = np.indices(template.grid.shape)[1] * template.grid.voxel_size + template.grid.affine[1, 3]
    wm = float(np.nanmean(chi_mni[(template.wm > 0.9) & (y > 10)]))
    print(f"mean chi: frontal WM {wm:+.4f} ppm; " + ", ".join(
        f"{n} {np.nanmean(chi_mni[np.isin(template.atlas, [c for c, k in names.items() if n in k])]):+.4f}"
        for n in NUCLEI))
    print(f"chain: {chain}")
    print(f"R2* median {np.nanmedian(r2star[mask]):.1f} /s; {r2star_warning(images.echo_times) or 'no warning'}")
    deep_grey_table(images, r, chi, mask, r2star, template)
    png = subject_qc("sub-01", images.t1w, images.t1w_affine, r.gm, r.wm, r.t1_mni, template.grid.affine,
                     template.brain_mask, chi, images.gre_affine, mask, r.preparation.get("brain_centre_mm"),
                     "included" if not qc_failures(measures, QCCriteria()) else "excluded", r2star=r2star)
    (args.out / "sub-01_qc.png").write_bytes(png)
    print(f"figure: {args.out / 'sub-01_qc.png'}")


def deep_grey_table(images, r, chi, mask, r2star, template) -> None:
    """The QSM stage's deep-grey table, with χ under each reference."""
    anat = {"csf": r.csf, "wm": r.wm, "gre_to_t1": r.gre_to_t1, "t1_points": r.t1_points}
    means = {}
    for kind in REFERENCES:
        region = reference_region(kind, mask, images.gre_affine, anat, images.t1w_affine, template)
        shifted, offset = referenced(chi, mask, region)
        table = subject_nuclei({"chi": shifted, "r2star": r2star}, {"chi": mask, "r2star": mask & np.isfinite(r2star)},
                               images.gre_affine, r.gm_mod, template, r.t1_points, r.gre_to_t1)
        means[kind] = table
        print(f"reference {kind}: {int(region.sum())} voxels, offset {offset:+.4f} ppm")
    first = means["brain"]
    print(f"{'structure':12s} {'n':>4s} " + " ".join(f"{'chi ' + k:>10s}" for k in REFERENCES)
          + f" {'R2* /s':>8s} {'GM mod':>7s}")
    for region in first["region"].values:
        row = first.sel(region=region)
        print(f"{region:12s} {int(row.sel(map='chi', statistic='n')):4d} "
              + " ".join(f"{float(means[k].sel(region=region, map='chi', statistic='mean')):+10.4f}" for k in REFERENCES)
              + f" {float(row.sel(map='r2star', statistic='mean')):8.1f}"
              f" {float(row.sel(map='gm_mod', statistic='mean')):7.3f}")


if __name__ == "__main__":
    main()
