"""The reference study's results table, side by side with what a ferritin run measured.

:func:`measure_run` reads one finished study (the group level's maps and
tables) and measures every number of the published headline table
(:mod:`ferritin.cohort.published`) the way the paper did: χ peak T and P_SVC
in each small volume, the peak's distance to the published coordinate, the
voxels at P < 0.005 uncorrected in the region; the GM ANCOVA (TIV) in the
clusters of increased χ (both thalami as one ROI, as published); the
correlations in the patients; Lilliefors; Table 1.  :func:`summarise` puts
several runs (seeds) beside the published values, and :func:`check_bars`
judges them against the reproduction's bars.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from scipy import stats as sps

from ferritin.cohort import published
from ferritin.cohort.templates import load_template
from ferritin.stats.clinical import ancova, lilliefors, pearson

from .spec import load_spec

__all__ = ["measure_run", "summarise", "check_bars", "reproduce", "findings_at_size", "BAR_T", "BAR_MM", "BAR_R"]

BAR_T = 1.0  # a mean T within this of the published one
BAR_MM = 12.0  # a mean χ peak within this distance (mm) of the published coordinate
BAR_R = 0.2  # a mean correlation within this of the published R
HEIGHT_P = 0.005  # the study's uncorrected threshold for voxel counts


def _row(key: str, finding: str, published_value, value, kind: str = "value") -> dict:
    return {"key": key, "finding": finding, "kind": kind,
            "published": np.nan if published_value is None else float(published_value), "ferritin": float(value)}


def _read_table(path: Path) -> pd.DataFrame:
    """A CSV of the group level; an empty frame for a table with no rows."""
    try:
        return pd.read_csv(path)
    except pd.errors.EmptyDataError:
        return pd.DataFrame()


def _chi_contrast(spec) -> str:
    for c in spec.contrasts:
        if c.map == "chi":
            return c.name
    raise ValueError("the study has no contrast of the χ map")


def _chi_rows(out: Path, spec, template) -> list[dict]:
    """Peak T, P_SVC, distance and suprathreshold voxels of χ in each published small volume."""
    name = _chi_contrast(spec)
    img = nib.load(out / "group" / f"contrast-{name}_stat-t_statmap.nii.gz")
    T = np.asarray(img.dataobj, dtype=float)
    mask = np.asarray(nib.load(out / "group" / f"contrast-{name}_mask.nii.gz").dataobj) > 0
    df = json.loads((out / "group" / f"contrast-{name}_stat-t_statmap.json").read_text())["df"]
    u = float(sps.t.isf(HEIGHT_P, df))
    vox_mm3 = float(abs(np.linalg.det(img.affine[:3, :3])))
    svc = _read_table(out / "tables" / f"{name}_svc.csv")
    rows, thalamic = [], 0.0
    for peak in published.CHI_PEAKS:
        inside = template.region(peak.region) & mask
        t_in = np.where(inside, T, -np.inf)
        ijk = np.unravel_index(int(np.argmax(t_in)), T.shape)
        xyz = img.affine[:3, :3] @ np.asarray(ijk, float) + img.affine[:3, 3]
        voxels = float((t_in > u).sum() * vox_mm3)  # mm³ = voxels at 1 mm
        if peak.region.startswith("Thalamus"):
            thalamic += voxels
        listed = svc[svc["svc"] == peak.name] if "svc" in svc.columns else svc.iloc[:0]
        p_svc = float(listed["p_fwe"].min()) if len(listed) and "p_fwe" in listed.columns else np.nan
        label = f"χ ↑ {peak.region}"
        rows.append(_row(f"chi_T:{peak.name}", f"{label}: peak T", peak.T, T[ijk]))
        # 1 where no voxel of the region passed the height threshold (SPM lists no peak there)
        rows.append(_row(f"chi_p:{peak.name}", f"{label}: P_SVC ({peak.p_svc_bound} published)", peak.p_svc,
                         1.0 if np.isnan(p_svc) else p_svc, "p"))
        rows.append(_row(f"chi_sig:{peak.name}", f"{label}: significant (P_SVC < 0.05)", float(peak.significant),
                         float(p_svc < 0.05), "share"))
        if peak.peak_mni is not None:
            rows.append(_row(f"chi_mm:{peak.name}", f"{label}: peak's distance to the published one (mm)", 0.0,
                             np.linalg.norm(xyz - np.asarray(peak.peak_mni))))
        if peak.voxels_p005 is not None:
            rows.append(_row(f"chi_vox:{peak.name}", f"{label}: voxels (1 mm) at P < 0.005", peak.voxels_p005, voxels))
    rows.append(_row("chi_vox:thalamus", "χ ↑ both thalami: voxels (1 mm) at P < 0.005",
                     published.THALAMUS_VOXELS_P005, thalamic))
    return rows


def _roi_frame(out: Path) -> pd.DataFrame:
    """Per-subject ROI means of each published ROI (voxel-weighted over its χ clusters); subjects as rows."""
    sources = _read_table(out / "tables" / "roi_sources.csv")
    values = _read_table(out / "tables" / "roi_values.csv")
    if not len(sources) or not len(values):
        return pd.DataFrame()
    columns = {}
    for roi in published.GM_ROIS:
        parts = sources[sources["source"].isin([f"SVC {r}" for r in roi.regions])]
        if not len(parts):
            continue
        weights = parts.set_index("roi")["voxels"].astype(float)
        v = values[values["roi"].isin(weights.index)]
        for m, g in v.groupby("map"):
            wide = g.pivot(index="subject", columns="roi", values="value")[list(weights.index)]
            columns[(m, roi.name)] = wide.to_numpy(float) @ weights.to_numpy() / weights.sum()
            index = wide.index
    if not columns:
        return pd.DataFrame()
    return pd.DataFrame({f"{m}:{r}": v for (m, r), v in columns.items()}, index=index)


def _participants(out: Path) -> pd.DataFrame:
    t = pd.read_csv(out / "tables" / "subjects.csv").set_index("subject")
    if "tiv_measured" in t.columns:
        t["tiv"] = t["tiv_measured"]
    return t


def _roi_rows(out: Path, spec) -> list[dict]:
    """GM ANCOVA, the correlations of the table, and Lilliefors, in the published ROIs."""
    groups = list(spec.groups)
    patients = spec.clinical.patient_group
    frame = _participants(out).join(_roi_frame(out), how="inner")
    rows = []
    for roi in published.GM_ROIS:
        col = f"gm_mod_s:{roi.name}"
        if col in frame.columns:
            res = ancova(frame.assign(value=frame[col]), "value", covariates=("tiv",), groups=groups)
            t, p = -res["t"], res["p"]  # statsmodels' coefficient is the second group's (NC − ALS)
        else:
            t, p = np.nan, np.nan
        rows.append(_row(f"gm_T:{roi.name}", f"GM ↓ {roi.name} (χ-cluster ROI): ANCOVA T", roi.T, t))
        rows.append(_row(f"gm_p:{roi.name}", f"GM ↓ {roi.name}: ANCOVA P ({roi.p_bound} published)", roi.p, p, "p"))
    pat = frame[frame["group"] == patients]
    for c in published.CORRELATIONS:
        x = f"{c.x[0]}:{c.x[1]}"
        y = c.y if isinstance(c.y, str) else f"{c.y[0]}:{c.y[1]}"
        r = p = np.nan
        if x in pat.columns and y in pat.columns:
            res = pearson(pat[x], pat[y], alternative="greater" if c.R > 0 else "less")
            r, p = res.r, (res.p_one_tailed if c.tails == 1 else res.p_two_tailed)
        tails = "one" if c.tails == 1 else "two"
        rows.append(_row(f"R:{c.name}", f"{c.name} (patients): R", c.R, r))
        rows.append(_row(f"R_p:{c.name}", f"{c.name}: P ({tails}-tailed)", c.p, p, "p"))
    for m, bound in published.NORMALITY.items():
        ps = [lilliefors(frame.loc[frame["group"] == g, col])["p"] for col in frame.columns if col.startswith(f"{m}:")
              for g in groups if frame.loc[frame["group"] == g, col].notna().sum() >= 5]
        rows.append(_row(f"lilliefors:{m}", f"Lilliefors P of the {m} ROI values, lowest (published: > bound)", bound,
                         min(ps) if ps else np.nan, "p"))
    return rows


def _table_one_rows(out: Path, spec) -> list[dict]:
    t1 = pd.read_csv(out / "tables" / "table1.csv").set_index("variable")
    rows = []
    for g in spec.groups:
        mean, sd = published.TABLE_ONE["age"].get(g, (None, None))
        rows.append(_row(f"age_mean:{g}", f"Table 1: age {g}, mean", mean, t1.loc["age", f"{g} mean"]))
        rows.append(_row(f"age_sd:{g}", f"Table 1: age {g}, s.d.", sd, t1.loc["age", f"{g} sd"]))
        men = t1.loc["sex"].get(f"{g} M", 0) if "sex" in t1.index else np.nan
        rows.append(_row(f"men:{g}", f"Table 1: men {g}", published.TABLE_ONE["men"].get(g), men))
    rows.append(_row("age_p", "Table 1: age, t-test P", published.TABLE_ONE["age"]["p"], t1.loc["age", "p"], "p"))
    sex_p = t1.loc["sex", "p"] if "sex" in t1.index else np.nan
    rows.append(_row("sex_p", "Table 1: sex, χ² P", published.TABLE_ONE["men"]["p"], sex_p, "p"))
    return rows


def measure_run(out_dir: str | Path) -> pd.DataFrame:
    """Every number of the published headline table, measured in one finished study's outputs.

    Parameters
    ----------
    out_dir : a study's output folder after the group level (``tables/``, ``group/``, ``spec.yaml``).

    Returns
    -------
    DataFrame with ``key, finding, kind, published, ferritin`` (``kind``: value, p or share).
    """
    out = Path(out_dir)
    spec = load_spec(out / "spec.yaml")
    template = load_template(spec.mni_voxel_size)
    rows = _chi_rows(out, spec, template) + _roi_rows(out, spec) + _table_one_rows(out, spec)
    return pd.DataFrame(rows)


def summarise(runs: list[pd.DataFrame]) -> pd.DataFrame:
    """Published values beside the mean, s.d. and per-seed values of several runs of :func:`measure_run`."""
    if not runs:
        raise ValueError("no runs to summarise")
    base = runs[0][["key", "finding", "kind", "published"]]
    values = pd.concat([r.set_index("key")["ferritin"].rename(f"seed {i}") for i, r in enumerate(runs)], axis=1)
    out = base.set_index("key").join(values)
    seeds = [c for c in out.columns if c.startswith("seed ")]
    out.insert(3, "mean", out[seeds].mean(axis=1))
    out.insert(4, "sd", out[seeds].std(axis=1, ddof=1) if len(seeds) > 1 else np.nan)
    return out.reset_index()


def check_bars(summary: pd.DataFrame) -> pd.DataFrame:
    """The reproduction's bars, each with the measured value and whether it is met."""
    s = summary.set_index("key")
    seeds = [c for c in s.columns if c.startswith("seed ")]
    rows = []

    def bar(text, value, met):
        rows.append({"bar": text, "measured": value, "met": bool(met)})

    for peak in published.CHI_PEAKS:
        sig = s.loc[f"chi_sig:{peak.name}", seeds].to_numpy(float)
        need = int(np.ceil(2 * len(seeds) / 3))
        if peak.significant:
            t = s.loc[f"chi_T:{peak.name}", "mean"]
            bar(f"χ {peak.name}: mean peak T within ±{BAR_T} of {peak.T}", round(t, 2), abs(t - peak.T) <= BAR_T)
            d = s.loc[f"chi_mm:{peak.name}", "mean"]
            bar(f"χ {peak.name}: mean peak within {BAR_MM:.0f} mm of the published one", round(d, 1), d <= BAR_MM)
            bar(f"χ {peak.name}: P_SVC < 0.05 in ≥ {need} of {len(seeds)} seeds", int(sig.sum()), sig.sum() >= need)
        else:
            bar(f"χ {peak.name}: not significant in ≥ {need} of {len(seeds)} seeds", int((1 - sig).sum()),
                (1 - sig).sum() >= need)
    for roi in published.GM_ROIS:
        t = s.loc[f"gm_T:{roi.name}", "mean"]
        bar(f"GM {roi.name}: mean ROI T within ±{BAR_T} of {roi.T}", round(t, 2), abs(t - roi.T) <= BAR_T)
    for c in published.CORRELATIONS:
        r = s.loc[f"R:{c.name}", "mean"]
        bar(f"{c.name}: sign of R and mean within ±{BAR_R} of {c.R}", round(r, 2),
            np.sign(r) == np.sign(c.R) and abs(r - c.R) <= BAR_R)
    return pd.DataFrame(rows)


def reproduce(out_dir: str | Path, seeds, client, *, n_per_group: int = published.N_PER_GROUP,
              voxel_size: float = 3.0, n_echoes: int = 12, progress: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Simulate the reference design once per seed, run the whole study on each, and compare with the paper.

    Each seed's study goes to ``out_dir/seed-<seed>`` (a complete output folder with its report and a
    one-seed ``tables/reproduction.csv``); a seed already run is measured again, not recomputed, and an
    interrupted one goes on from the subjects it had finished.  The simulated datasets hold no per-subject
    ground-truth images (the results are compared with the paper, not with the truth).  Writes
    ``out_dir/reproduction.csv`` (published, mean, s.d. and each seed's value of every number) and
    ``out_dir/reproduction_bars.csv``, and ``out_dir/report.html``: the first seed's report with the
    table of all seeds.

    Returns
    -------
    (summary, bars) : the two tables written.
    """
    from dataclasses import replace

    from ferritin.cohort.simulate import preset, simulate_cohort

    from .study import run_study, write_report
    from .tables import write_csv

    seeds = list(seeds)
    if not seeds:
        raise ValueError("give at least one seed")
    out = Path(out_dir)
    study = replace(load_spec(), mni_voxel_size=max(2.0, float(voxel_size)))
    runs = []
    for seed in seeds:
        folder = out / f"seed-{seed}"
        spec = preset("reference-study", seed=seed, voxel_size=float(voxel_size), n_echoes=n_echoes,
                      n_per_group={g: n_per_group for g in ("ALS", "NC")})
        if not (folder / "bids" / "participants.tsv").exists():
            simulate_cohort(folder / "bids", spec, client=client, progress=progress, truth_maps=False)
        run_study(folder / "bids", folder, study, client, levels=("participant",), progress=progress)
        run_study(folder / "bids", folder, study, levels=("group",), progress=progress, report=False)
        runs.append(measure_run(folder))
        write_csv(summarise(runs[-1:]), folder / "tables" / "reproduction.csv", index=False)
        write_report(folder)
    summary = summarise(runs)
    bars = check_bars(summary)
    write_csv(summary, out / "reproduction.csv", index=False)
    write_csv(bars, out / "reproduction_bars.csv", index=False)
    first = out / f"seed-{seeds[0]}"
    write_csv(summary, first / "tables" / "reproduction.csv", index=False)
    write_csv(bars, first / "tables" / "reproduction_bars.csv", index=False)
    report = write_report(first)
    if report is not None:
        (out / "report.html").write_bytes(report.read_bytes())
    return summary, bars


def findings_at_size(out_dir: str | Path, measured: pd.DataFrame | None = None, effects=()) -> pd.DataFrame:
    """Which of the published findings one run reproduces, and what its size lets it expect.

    A cohort power-matched to the reference study (:func:`~ferritin.cohort.simulate.power_matched_effects`)
    expects the published T, but a smaller cohort has fewer degrees of freedom, so the same T is less
    significant.  For each χ small volume: the expected T, the T that P_SVC < 0.05 needs at this run's
    df and smoothness, the power that gives (non-central t at the expected T), the measured peak T and
    P_SVC, and whether the finding is reproduced (significant where the paper's was, not where it was
    not); for each GM ROI the same with the ANCOVA's two-sided P < 0.05.  The expected T is the
    published one, or, for a finding whose reference effects are among the planted ``effects``
    (:class:`~ferritin.cohort.simulate.Effect`), the calibration's expectation at their planted size
    (:func:`~ferritin.cohort.calibration.expected_ferritin_t`): a GM loss planted at the simulator's
    largest is expected to give less than the published T.
    """
    from ferritin.cohort.calibration import expected_ferritin_t
    from ferritin.stats import rft

    out = Path(out_dir)
    spec = load_spec(out / "spec.yaml")
    template = load_template(spec.mni_voxel_size)
    m = (measured if measured is not None else measure_run(out)).set_index("key")["ferritin"]
    name = _chi_contrast(spec)
    side = json.loads((out / "group" / f"contrast-{name}_stat-t_statmap.json").read_text())
    mask = np.asarray(nib.load(out / "group" / f"contrast-{name}_mask.nii.gz").dataobj) > 0
    df = float(side["df"])
    fwhm_vox = np.asarray(side["fwhm_mm"], float) / spec.mni_voxel_size
    planted = {e.name: e for e in effects}
    subjects = _participants(out)["group"].value_counts()
    n = int(subjects.min()) if len(subjects) else 0

    def expected(names, modality, published_t):
        ts = [expected_ferritin_t(planted[k], modality, n) if k in planted else None for k in names]
        return published_t if n < 2 or any(t is None for t in ts) else float(np.mean(ts))

    rows = []
    for peak in published.CHI_PEAKS:
        vol = template.region(peak.region) & mask
        need = float(rft.threshold_fwe(0.05, (1.0, df), "T", rft.resel_counts(vol, fwhm_vox), S=int(vol.sum())))
        p = m[f"chi_p:{peak.name}"]
        rows.append({"finding": f"χ ↑ {peak.region}", "published": "significant" if peak.significant else "not significant",
                     "expected T": (t := expected([peak.name], "chi", peak.T)), "T needed": need,
                     "power": float(sps.nct.sf(need, df, t)),
                     "measured T": m[f"chi_T:{peak.name}"], "P": p, "reproduced": bool((p < 0.05) == peak.significant)})
    df_roi = df + 1  # the ROI ANCOVA has group and TIV only (one column fewer than the voxelwise model)
    need = float(sps.t.isf(0.025, df_roi))
    for roi in published.GM_ROIS:
        p = m[f"gm_p:{roi.name}"]
        rows.append({"finding": f"GM ↓ {roi.name} (χ-cluster ROI)", "published": "significant",
                     "expected T": (t := expected(roi.regions, "gm", roi.T)), "T needed": -need,
                     "power": float(sps.nct.cdf(-need, df_roi, t)),
                     "measured T": m[f"gm_T:{roi.name}"], "P": p, "reproduced": bool(p < 0.05)})
    return pd.DataFrame(rows)
