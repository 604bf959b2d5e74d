"""Calibration figures: the ground truth's effect-to-noise ratio of each reference effect, and ferritin's retention.

Run by hand (cohorts of the demo design: the reference effects power-matched to 10 + 10, 12 echoes, 3 mm):
    .venv/bin/python benchmarks/calibration.py --run --seeds 100 101 102 --workdir W [--gm-scale 3]
or on cohorts already simulated into ``DIR/bids`` and run to the participant level into ``DIR/out`` (or
into ``DIR`` itself, as ``ferritin reproduce`` leaves each seed):
    .venv/bin/python benchmarks/calibration.py DIR [DIR ...]

Per cohort and planted effect, with the study's design (group, TIV, age; the ROI ANCOVA with TIV):
- the ground truth's effect size and spread, ``e = β · E[f] / σ`` at the reference amplitude, pooled over
  the cohorts — χ by regression of the MNI maps on each patient's known share of the effect
  (``severity_factor``), at the voxel of the effect's AAL region where ``e`` is largest; GM for the mean
  smoothed modulated GM of the ROI of increased χ that the group level drew from the effect's small volume
  (where the study measured GM; an effect whose χ was not found is left out of that cohort), by its group
  difference (the ROI ANCOVA's estimate, per unit of the patients' mean share) over the controls' residual
  s.d.: the normalisation does not keep a GM loss in proportion to its size, so a slope on ``f`` would
  promise a T it does not give;
- the same fits on ferritin's maps, and both T values of the cohort (χ: peak in the region; GM: ANCOVA
  of the mean in the effect's core, weight >= 0.5, and in the χ-cluster ROI).
Printed: the per-cohort figures, ``EFFECT_TO_NOISE`` per effect, ``RETENTION`` per modality and region class
(ferritin's effect-to-noise ratio over the truth's, the effects of a class summed) and the reference effects they calibrate.
``--gm-scale`` plants the GM effects that many times larger, to measure the retention near the
calibrated amplitude (a registration takes up small contractions more fully than large ones).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from ferritin import dask_client, load_spec, run_study
from ferritin.cohort.calibration import calibrated_effects, region_class, severity_moments
from ferritin.cohort.simulate import (
    REFERENCE_EFFECTS,
    Effect,
    power_matched_effects,
    preset,
    severity_factor,
    simulate_cohort,
)
from ferritin.cohort.store import CohortStore
from ferritin.cohort.templates import load_template
from ferritin.engine.anat import smooth_fwhm
from ferritin.stats.clinical import ancova
from ferritin.stats.design import design_matrix
from ferritin.stats.glm import fit_glm, t_contrast

SPACE = "space-MNI152NLin2009cSym"
GROUPS = ("ALS", "NC")


def simulate_and_run(workdir: Path, seed: int, echoes: int, gm_scale: float) -> Path:
    """A demo-design cohort at 3 mm simulated and run to the participant level (skipped when done)."""
    d = workdir / (f"seed-{seed}" if gm_scale == 1 else f"seed-{seed}-gm{gm_scale:g}")
    # the reference effects (GM times gm_scale), power-matched to 10 + 10 (not the calibrated demo preset)
    effects = tuple(replace(e, gm_fraction=e.gm_fraction * gm_scale) for e in REFERENCE_EFFECTS)
    spec = preset("demo", seed=seed, n_echoes=echoes, effects=power_matched_effects(effects, 10))
    study = replace(load_spec(), mni_voxel_size=spec.voxel_size)
    with dask_client(quiet=True) as client:
        if not (d / "bids" / "participants.tsv").exists():
            simulate_cohort(d / "bids", spec, client=client)
        run_study(d / "bids", d / "out", study, client, levels=("participant",), progress=False)
    return d


def out_dir(d: Path) -> Path:
    """A calibration cohort keeps its outputs in out/, a reproduction seed beside bids/."""
    return d / "out" if (d / "out").is_dir() else d


def chi_cluster_rois(out: Path) -> dict:
    """``{effect: mask}``: the group level's ROIs of increased χ, by the small volume they came from —
    where the study measured GM (none for an effect whose χ was not found, or before the group level)."""
    sources, dseg = out / "tables" / "roi_sources.csv", out / "group" / "desc-roi_dseg.nii.gz"
    if not sources.exists() or not dseg.exists():
        return {}
    labels = np.asarray(nib.load(dseg).dataobj)
    index = pd.read_csv(out / "group" / "desc-roi_dseg.tsv", sep="\t").set_index("name")["index"]
    rois = {}
    for row in pd.read_csv(sources).itertuples():
        if str(row.source).startswith("SVC ") and row.contrast.startswith("chi"):
            name = row.source[4:]
            rois[name] = rois.get(name, False) | (labels == index[row.roi])
    return rois


def load_cohort(d: Path):
    """Participants (with true and measured TIV) and the truth's and ferritin's MNI maps, subjects in order."""
    out = out_dir(d)
    bids, store = d / "bids", CohortStore(out / "cohort.zarr")
    table = pd.read_csv(bids / "participants.tsv", sep="\t").set_index("participant_id")
    truth = pd.read_csv(bids / "derivatives" / "ground-truth" / "participants.tsv", sep="\t")
    table["tiv_true"] = truth.set_index("participant_id")["tiv_ml"]
    # the subjects the group level used: computed, and not excluded by QC (a failed normalisation has no χ
    # where the others have it, and would empty the common mask)
    excluded_file = out / "tables" / "excluded.json"
    excluded = set(json.loads(excluded_file.read_text())) if excluded_file.exists() else set()
    subjects = [s for s in table.index if s not in excluded
                and store.record(f"derived/{s}/qsm") and store.record(f"derived/{s}/anat")]
    table = table.loc[subjects]
    table["tiv"] = [float(store.open_node(f"derived/{s}/anat").attrs["tiv_ml"]) for s in subjects]
    gt = bids / "derivatives" / "ground-truth"
    maps = {
        ("ferritin", "chi"): [store.open_node(f"derived/{s}/qsm")["chi_mni"].values for s in subjects],
        ("ferritin", "gm"): [store.open_node(f"derived/{s}/anat")["gm_mod_s"].values for s in subjects],
        ("truth", "chi"): [nib.load(gt / s / f"{s}_{SPACE}_Chimap.nii.gz").get_fdata() for s in subjects],
        ("truth", "gm"): [nib.load(gt / s / f"{s}_{SPACE}_label-GM_desc-modulated_probseg.nii.gz").get_fdata()
                          for s in subjects],
    }
    sim = json.loads((gt / "simulation.json").read_text())
    effects = [Effect(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in e.items()}) for e in sim["effects"]]
    return table, {k: np.stack(v).astype(np.float64) for k, v in maps.items()}, effects, float(sim["voxel_size"])


def _design(table: pd.DataFrame, tiv: str, covariates=("age",)) -> np.ndarray:
    cols = [table[c].to_numpy(float) - table[c].mean() for c in (tiv, *covariates)]
    return np.column_stack(cols)


def peak_t(Y: np.ndarray, table: pd.DataFrame, tiv: str, mask: np.ndarray, region: np.ndarray) -> float:
    """Largest ALS > NC T of the voxelwise model (group, TIV, age) inside ``region`` ∩ ``mask``."""
    design = design_matrix(table.rename(columns={tiv: "tiv_cov"}), groups=GROUPS, covariates=("tiv_cov", "age"))
    fit = fit_glm(np.where(mask, Y, 0.0), design.X, mask=mask)
    T = np.asarray(t_contrast(fit, np.array([1.0, -1.0, 0.0, 0.0])))
    return float(np.nanmax(np.where(region & mask, T, np.nan)))


def roi_t(Y: np.ndarray, table: pd.DataFrame, tiv: str, roi: np.ndarray) -> float:
    """ANCOVA (TIV) T of ALS − NC in the ROI mean."""
    d = table.assign(value=Y[:, roi].mean(axis=1), tiv_cov=table[tiv])
    res = ancova(d, "value", covariates=("tiv_cov",), groups=list(GROUPS))
    return -res["t"]  # statsmodels' coefficient is NC − ALS with ALS as the reference level


def effect_fit(Y: np.ndarray, f: np.ndarray, nuisance: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Per voxel (columns of ``Y``): the effect per unit of ``f``, the residual sum of squares and its df."""
    Z = np.column_stack([np.ones(len(f)), f, nuisance])
    coef, *_ = np.linalg.lstsq(Z, Y, rcond=None)
    resid = Y - Z @ coef
    return coef[1], (resid**2).sum(axis=0), len(f) - Z.shape[1]


def group_fit(y: np.ndarray, patient: np.ndarray, f: np.ndarray, nuisance: np.ndarray) -> tuple:
    """The group difference per unit of the patients' mean share, the controls' residual sum of squares
    and its df — the estimate the ROI ANCOVA makes.  Unlike :func:`effect_fit` it does not assume that
    the measured effect grows in proportion to each patient's share: a normalisation that absorbs small
    contractions whole and keeps part of large ones has a steeper slope on ``f`` than its mean effect."""
    Z = np.column_stack([np.ones(len(y)), patient.astype(float), nuisance])
    coef, *_ = np.linalg.lstsq(Z, y, rcond=None)
    resid = (y - Z @ coef)[~patient]
    return (coef[1:2] / f[patient].mean(), (resid**2).sum(axis=0, keepdims=True),
            int((~patient).sum()) - 1 - nuisance.shape[1])


def measure(d: Path) -> tuple[pd.DataFrame, dict]:
    """Per effect: both T values of this cohort, and the effect fits of truth and ferritin (reference amplitude)."""
    table, maps, effects, voxel = load_cohort(d)
    template = load_template(voxel)
    mask = np.isfinite(maps[("ferritin", "chi")]).all(axis=0) & np.isfinite(maps[("truth", "chi")]).all(axis=0)
    mask &= template.brain_mask
    fwhm = load_spec().anat.vbm_fwhm_mm
    maps[("truth", "gm")] = np.stack([smooth_fwhm(g, fwhm, (voxel,) * 3) for g in maps[("truth", "gm")]])
    gt = d / "bids" / "derivatives" / "ground-truth"
    severity = pd.read_csv(gt / "participants.tsv", sep="\t").set_index("participant_id")["severity"]
    reference = {e.name: e for e in REFERENCE_EFFECTS}
    tiv = {"truth": "tiv_true", "ferritin": "tiv"}
    clusters = chi_cluster_rois(out_dir(d))
    rows, fits = [], {}
    for e in effects:
        patient = (table["group"] == GROUPS[0]).to_numpy()
        f = {m: np.where(patient, severity_factor(e, severity.loc[table.index].to_numpy(), m), 0.0)
             for m in ("chi", "gm")}
        core = nib.load(gt / f"effect-{e.name}_{SPACE}_mask.nii.gz").get_fdata() >= 0.5
        roi = clusters.get(e.name)
        region = template.region(e.region) & mask
        ref = reference.get(e.name)
        per = {"chi": e.chi_ppm / ref.chi_ppm, "gm": e.gm_fraction / ref.gm_fraction} if ref else {"chi": 1, "gm": 1}
        fits[e.name] = {}
        full = template.region(e.region)  # the same voxels in every cohort: NaN where this one has no χ
        for source in ("truth", "ferritin"):
            beta, rss, df = effect_fit(maps[(source, "chi")][:, region], f["chi"], _design(table, tiv[source]))
            chi = (np.full(full.sum(), np.nan), np.full(full.sum(), np.nan), np.where(region[full], df, 0))
            chi[0][region[full]], chi[1][region[full]] = beta, rss
            gm = (group_fit(maps[(source, "gm")][:, roi].mean(axis=1), patient, f["gm"], _design(table, tiv[source], ()))
                  if roi is not None else (np.full(1, np.nan), np.full(1, np.nan), 0))
            fits[e.name][source] = {"chi": (chi[0] / per["chi"], chi[1], chi[2]),
                                    "gm": (gm[0] / per["gm"], gm[1], gm[2])}
        rows.append({"cohort": d.name, "effect": e.name, "class": region_class(e.region),
                     "chi truth": peak_t(maps[("truth", "chi")], table, "tiv_true", mask, region),
                     "chi ferritin": peak_t(maps[("ferritin", "chi")], table, "tiv", mask, region),
                     "gm truth": roi_t(maps[("truth", "gm")], table, "tiv_true", core),
                     "gm ferritin": roi_t(maps[("ferritin", "gm")], table, "tiv", core),
                     "χ-cluster voxels": 0 if roi is None else int(roi.sum()),
                     "gm truth χ-cluster": np.nan if roi is None else roi_t(maps[("truth", "gm")], table, "tiv_true", roi),
                     "gm ferritin χ-cluster": np.nan if roi is None else roi_t(maps[("ferritin", "gm")], table, "tiv", roi)})
    return pd.DataFrame(rows), fits


def pooled_effect_to_noise(fits: list[dict], source: str) -> dict:
    """``e = β · E[f] / σ`` at the reference amplitude and gain, the cohorts' fits pooled (χ: at the best voxel)."""
    out = {}
    for name in fits[0]:
        mean_f = severity_moments(next(e for e in REFERENCE_EFFECTS if e.name == name).severity_gain)[0]
        out[name] = {}
        for m in ("chi", "gm"):
            parts = [f[name][source][m] for f in fits]
            beta = np.nanmean([p[0] for p in parts], axis=0)
            sigma = np.sqrt(np.nansum([p[1] for p in parts], axis=0) / np.sum([p[2] for p in parts], axis=0))
            covered = np.sum([p[2] > 0 for p in parts], axis=0) == len(parts)  # voxels every cohort has
            e = beta * mean_f / sigma
            out[name][m] = round(float(e[covered].max() if m == "chi" else e[0]), 3)  # signed: GM loss < 0
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dirs", nargs="*", type=Path, help="cohorts with bids/ and out/ (participant level done)")
    ap.add_argument("--run", action="store_true", help="simulate and run the cohorts of --seeds first")
    ap.add_argument("--seeds", type=int, nargs="+", default=[100, 101, 102])
    ap.add_argument("--echoes", type=int, default=12)
    ap.add_argument("--gm-scale", type=float, default=1.0, help="plant the GM effects this many times larger")
    ap.add_argument("--workdir", type=Path, default=Path("calibration-work"))
    args = ap.parse_args()
    dirs = list(args.dirs)
    if args.run:
        dirs += [simulate_and_run(args.workdir, s, args.echoes, args.gm_scale) for s in args.seeds]
    if not dirs:
        ap.error("give cohort folders or --run")
    measured = [measure(d) for d in dirs]
    t = pd.concat([m[0] for m in measured], ignore_index=True)
    pd.set_option("display.width", 160)
    print(t.round(2).to_string(index=False))
    e2n = pooled_effect_to_noise([m[1] for m in measured], "truth")
    kept = pooled_effect_to_noise([m[1] for m in measured], "ferritin")
    print("\nEFFECT_TO_NOISE (ground truth, reference amplitude, cohorts pooled):")
    print(e2n)
    print("ferritin's, the same way:")
    print(kept)
    retention = {}
    classes = {e: region_class(next(x for x in REFERENCE_EFFECTS if x.name == e).region) for e in e2n}
    for cls in sorted(set(classes.values())):
        names = [e for e, c in classes.items() if c == cls]
        for m in ("chi", "gm"):
            retention[(m, cls)] = round(sum(kept[e][m] for e in names) / sum(e2n[e][m] for e in names), 3)
    print("\nRETENTION (ferritin's effect-to-noise ratio over the truth's, effects of a class summed):")
    print(retention)
    if {e.name for e in REFERENCE_EFFECTS} <= set(e2n):
        print("\nreference effects calibrated with these figures:")
        for e in calibrated_effects(REFERENCE_EFFECTS, effect_to_noise=e2n, retention=retention):
            print(f"  {e.name}: chi_ppm {e.chi_ppm:.4f}, gm_fraction {e.gm_fraction:.3f}")


if __name__ == "__main__":
    main()
