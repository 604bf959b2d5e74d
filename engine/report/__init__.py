"""``report.html``: the study as a paper would report it, in one offline file.

:func:`build_report` reads what the group level wrote — the cohort store
(``/stats``, ``/roi``, per-subject QC attributes), ``tables/*.csv`` and
``spec.yaml`` — builds one :class:`~.blocks.Section` per part of the study and
renders them with the Jinja2 template ``templates/report.html.j2`` (as
nilearn's reports are built): a self-contained page, every figure an embedded
PNG, the style inline, nothing fetched from anywhere.  It can be rebuilt at any
time with ``ferritin report OUTPUT_DIR``.
"""

from __future__ import annotations

import datetime as _dt
import json
import platform
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd

from ferritin.cohort.errors import OutputError
from ferritin.cohort.store import CohortStore
from ferritin.cohort.templates import load_template

from ..records import stage_seconds
from ..spec import StudySpec, load_spec
from . import figures
from .blocks import Block, Section, empty, figure, finding, format_value, heading, table, text
from .methods import methods_text

__all__ = ["build_report", "software_versions", "methods_text"]

_PACKAGES = ["numpy", "scipy", "dask", "distributed", "xarray", "zarr", "nibabel", "nilearn", "statsmodels",
             "pandas", "scikit-image", "antspyx", "matplotlib"]
_LABELS = {"chi": "mean χ (ppm)", "gm_mod_s": "modulated GM (smoothed)", "alsfrs_r": "ALSFRS-R", "umn": "UMN score",
           "dd": "disease duration (months)", "dpr": "progression rate (points/month)", "age": "age (years)",
           "tiv": "TIV (ml)"}


def software_versions() -> dict[str, str]:
    """Versions of Python, ferritin and the libraries that computed the results."""
    out = {"python": platform.python_version()}
    for name in ["ferritin", *_PACKAGES]:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def _read(path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path)
    except (FileNotFoundError, pd.errors.EmptyDataError):
        return pd.DataFrame()


def _subject_qc(store: CohortStore, subjects) -> pd.DataFrame:
    rows = []
    for sub in subjects:
        if store.record(f"derived/{sub}/anat") is None:
            continue
        a = store.open_node(f"derived/{sub}/anat").attrs
        row = {"subject": sub, "qc_gm_corr": a["qc_gm_corr"], "qc_dice": a["qc_dice"], "tiv_ml": a["tiv_ml"]}
        for key in ("qc_t1_corr", "qc_brain_top_gap_mm", "gm_ml", "wm_ml", "csf_ml"):
            row[key] = a.get(key)
        row.update(_extraction_and_attempts(a.get("preparation") or {}))
        row["r2star_median"] = _median_r2star(store, sub)
        row.update(_chain_decisions(store, sub))
        rows.append(row)
    columns = ["subject", "qc_gm_corr", "qc_t1_corr", "qc_dice", "tiv_ml", "gm_ml", "wm_ml", "csf_ml",
               "qc_brain_top_gap_mm", "r2star_median", "brain_extraction", "normalisation", "ringing_filter",
               "chi_reference", "notes"]
    return pd.DataFrame(rows, columns=columns).set_index("subject")


def _median_r2star(store: CohortStore, sub: str) -> float | None:
    """Median R2* (1/s) in a subject's QSM mask: about 20-30/s in a healthy adult brain at 3 T."""
    if store.record(f"derived/{sub}/qsm") is None:
        return None
    node = store.open_node(f"derived/{sub}/qsm")
    if "r2star" not in node:
        return None
    values = node["r2star"].values[node["qsm_mask"].values > 0]
    values = values[np.isfinite(values)]
    return round(float(np.median(values)), 1) if values.size else None


def _chain_decisions(store: CohortStore, sub: str) -> dict:
    """What the QSM chain decided for a subject, in words for the QC table: the axes it filtered against
    ringing, the χ reference and any warning about R2*."""
    if store.record(f"derived/{sub}/qsm") is None:
        return {}
    chain = store.open_node(f"derived/{sub}/qsm").attrs.get("chain") or {}
    if not chain:
        return {}
    axes = chain.get("tapered_axes", [])
    ringing = chain.get("ringing", "")
    if ringing == "auto":
        ringing = f"axes {', '.join(map(str, axes))}" if axes else "none found"
    ref = chain.get("reference") or {}
    return {"ringing_filter": ringing,
            "chi_reference": f"{ref.get('region', '')} ({ref.get('voxels', '?')} voxels)" if ref else "",
            "notes": chain.get("r2star_warning") or ""}


def _extraction_and_attempts(preparation: dict) -> dict:
    """How a subject's brain was found and whether its normalisation was tried twice, in words for the QC table."""
    extraction = preparation.get("brain_extraction") or {}
    found = extraction.get("method", "")
    if "fallback" in extraction:
        found = f"{found} ({extraction['fallback'].split(':')[0]})"
    attempts = preparation.get("attempts") or []
    if len(attempts) > 1:
        first = attempts[0]
        kept = "second" if attempts[1].get("kept") else "first"
        how = (f"retried from the {attempts[1]['affine_start']} start after the {first['affine_start']} start "
               f"failed QC ({'; '.join(first['qc_failures'])}); {kept} attempt kept")
    else:
        how = f"{preparation.get('affine_start', 'centre')} start" if preparation else ""
    return {"brain_extraction": found, "normalisation": how}


def _subject_qc_figures(store: CohortStore, subjects, template, excluded: dict, limit: int = 100):
    """The per-subject QC row (T1 with tissue outlines, normalised T1 with the template outline, χ)."""
    figs = []
    for sub in subjects[:limit]:
        try:
            nat = store.open_node(f"native/{sub}")
            anat = store.open_node(f"derived/{sub}/anat")
            qsm = store.open_node(f"derived/{sub}/qsm") if store.record(f"derived/{sub}/qsm") else None
            prep = anat.attrs.get("preparation") or {}
            verdict = f"excluded: {excluded[sub]}" if sub in excluded else "included"
            png = figures.subject_qc(
                sub, nat["t1w"].values, np.asarray(nat.attrs["t1w_affine"]), anat["gm"].values, anat["wm"].values,
                anat["t1_mni"].values, template.grid.affine, template.brain_mask,
                None if qsm is None else qsm["chi"].values, np.asarray(nat.attrs["gre_affine"]),
                None if qsm is None else qsm["qsm_mask"].values > 0, prep.get("brain_centre_mm"), verdict,
                r2star=None if qsm is None or "r2star" not in qsm else qsm["r2star"].values)
        except (KeyError, OSError, ValueError):  # a half-processed subject is reported elsewhere
            continue
        figs.append((sub, png))
    return figs


def _qc_panels(store: CohortStore, subjects, template, limit: int = 8):
    """Mask-on-magnitude and template-GM-on-warped-GM slices for up to ``limit`` subjects."""
    masks, norms = [], []
    k_mni = int(template.grid.world_to_voxel([[0, 0, 5]])[0][2])
    for sub in subjects[:limit]:
        try:
            if store.record(f"derived/{sub}/qsm") is not None:
                mag = store.open_node(f"native/{sub}")["megre_mag"].isel(echo=0).values
                mask = store.open_node(f"derived/{sub}/qsm")["qsm_mask"].values > 0
                k = mag.shape[2] // 2
                masks.append((sub, mag[:, :, k], mask[:, :, k]))
            if store.record(f"derived/{sub}/anat") is not None:
                gm = store.open_node(f"derived/{sub}/anat")["gm_mod"].values
                norms.append((sub, gm[:, :, k_mni], template.gm[:, :, k_mni] > 0.5))
        except (KeyError, OSError):  # a half-processed subject is reported elsewhere
            continue
    return masks, norms


@dataclass
class _Study:
    """What every section reads: the output folder, its spec, the store and the template."""

    out: Path
    tables: Path
    spec: StudySpec
    run: dict
    store: CohortStore
    template: object
    excluded: dict
    used: pd.DataFrame
    stats: dict  # contrast name -> its /stats node

    def svc_alpha(self) -> float:
        return self.spec.inference.svc_alpha

    def best_svc(self, name: str) -> pd.DataFrame:
        """The lowest-p peak of each small volume of a contrast."""
        svc = _read(self.tables / f"{name}_svc.csv")
        if "p_fwe" not in svc.columns or not len(svc):
            return pd.DataFrame()
        return svc.sort_values("p_fwe").groupby("svc", sort=False).head(1)


def _open_study(out_dir: str | Path, store_path) -> _Study:
    out = Path(out_dir)
    tables = out / "tables"
    if not (out / "spec.yaml").exists() or not tables.is_dir():
        raise OutputError(f"{out} has no group-level results (spec.yaml, tables/): run the group level first")
    spec = load_spec(out / "spec.yaml")
    run = json.loads((out / "group" / "run.json").read_text()) if (out / "group" / "run.json").exists() else {}
    if store_path is None and run:
        store_path = run["store"]
    store = CohortStore(store_path or out / "cohort.zarr")
    excluded = json.loads((tables / "excluded.json").read_text()) if (tables / "excluded.json").exists() else {}
    used = _read(tables / "subjects.csv")
    used = used.set_index("subject") if len(used) else used
    stats = {c.name: store.open_node(f"stats/{c.name}").load() for c in spec.contrasts
             if store.exists(f"stats/{c.name}")}
    return _Study(out, tables, spec, run, store, load_template(spec.mni_voxel_size), excluded,
                  used, stats)


def _findings_section(st: _Study) -> Section:
    """The small-volume results in words, first."""
    blocks = []
    for name in st.stats:
        for _, r in st.best_svc(name).iterrows():
            verdict = "significant" if r.p_fwe < st.svc_alpha() else "not significant"
            blocks.append(finding(name, f"in {r.svc}: peak ({r.x:.0f}, {r.y:.0f}, {r.z:.0f}) mm, T = {r['T']:.2f}, "
                                  f"p(FWE-SVC) = {format_value(r.p_fwe)} — {verdict}"))
    return Section("findings", "Findings", blocks or [empty("No small-volume result.")])


def _table1_section(st: _Study) -> Section:
    blocks = [table(_read(st.tables / "table1.csv"), "Demographics and clinical scores by group (t test; sex: "
                                                     "Pearson chi-squared)")]
    notes = st.store.open_node("participants").attrs.get("notes", []) if st.store.exists("participants") else []
    if notes:
        blocks.append(text("How participants.tsv was read: " + "; ".join(notes) + "."))
    return Section("table1", "Table 1: participants", blocks)


def _maps_section(st: _Study) -> Section:
    """Per contrast: thresholds, the glass brain, the significant SVC peaks, cluster and SVC tables."""
    grid, inf = st.template.grid, st.spec.inference
    blocks = []
    for c in st.spec.contrasts:
        name = c.name
        if name not in st.stats:
            continue
        ds = st.stats[name]
        T = np.where(ds["mask"].values > 0, ds["T"].values, np.nan)
        u = float(ds.attrs["u"])
        blocks.append(heading(f"{name}: {c.map}, {c.weights}"))
        blocks.append(text(f"df = {ds.attrs['df']}, FWHM = {', '.join(f'{v:.1f}' for v in ds.attrs['fwhm_mm'])} mm, "
                           f"height threshold T ≥ {u:.2f} (P < {inf.height_p}), whole-brain FWE threshold "
                           f"T ≥ {float(ds.attrs['fwe_threshold']):.2f}, extent ≥ {ds.attrs['k_voxels']} voxels."))
        blocks.append(figure(figures.glass_brain(T, grid.affine, u, name), f"{name}: T map above {u:.2f} (glass brain)"))
        for _, r in st.best_svc(name).iterrows():
            if r.p_fwe < st.svc_alpha():
                png = figures.stat_slices(T, grid.affine, st.template.t1, u, (r.x, r.y, r.z), f"{name} {r.svc}")
                blocks.append(figure(png, f"{name}: peak of {r.svc} at ({r.x:.0f}, {r.y:.0f}, {r.z:.0f})"))
        blocks.append(table(_read(st.tables / f"{name}_clusters.csv"), "Whole-brain clusters (extent rule applied)",
                            max_rows=15, source=f"tables/{name}_clusters.csv"))
        blocks.append(table(_read(st.tables / f"{name}_svc.csv"), "Small-volume correction"))
        perm = _read(st.tables / f"{name}_permutation.csv")
        if len(perm):
            blocks.append(table(perm, f"Permutation inference ({inf.permutations} Freedman–Lane permutations): "
                                      "clusters at the same height threshold, FWE p by cluster mass, max-T and TFCE",
                                max_rows=15, source=f"tables/{name}_permutation.csv"))
    return Section("maps", "Statistical maps and tables", blocks)


def _roi_section(st: _Study) -> Section:
    roi_groups = _read(st.tables / "roi_groups.csv")
    blocks = [table(_read(st.tables / "roi_sources.csv"), "ROIs (clusters surviving correction, and spec regions)")]
    if len(roi_groups):
        for m in roi_groups["map"].unique():
            png = figures.adjusted_bars(roi_groups, list(st.spec.groups), m, _LABELS.get(m, m))
            blocks.append(figure(png, f"{_LABELS.get(m, m)} by group, adjusted for "
                                      f"{roi_groups['covariates'].iloc[0]} (mean ± s.e.)"))
        blocks.append(table(roi_groups, "ROI values by group (ANCOVA)"))
    return Section("roi", "Regions of interest", blocks)


def _nuclei_section(st: _Study) -> Section | None:
    """The deep-grey table: each group's mean (s.d.) of the subjects' means, per structure and map."""
    nuclei = _read(st.tables / "nuclei.csv")
    if not len(nuclei):
        return None
    units = {"chi": "χ (ppm)", "r2star": "R2* (1/s)", "gm_mod": "modulated GM"}
    rows = []
    for (region, m), part in nuclei.groupby(["region", "map"], sort=False):
        row = {"structure": region, "map": units.get(m, m)}
        for g in st.spec.groups:
            v = part.loc[part["group"] == g, "mean"].dropna()
            row[g] = f"{v.mean():.4g} ({v.std(ddof=1):.2g})" if len(v) > 1 else (f"{v.mean():.4g}" if len(v) else "")
        row["median voxels"] = int(part["n"].median())
        rows.append(row)
    blocks = [table(pd.DataFrame(rows), "Deep-grey nuclei (AAL2; substantia nigra, red nucleus, dentate: Talairach; eroded): mean (s.d.) over each group's subjects of "
                                        "each subject's mean; χ and R2* on the subject's own grid, GM in MNI space",
                    max_rows=90, source="tables/nuclei.csv")]
    return Section("nuclei", "Deep-grey nuclei", blocks)


def _r_text(corr: pd.DataFrame, x: str, y: str) -> dict:
    """The correlation of x and y per group, as the scatter plot's legend text."""
    return {r.group: f"R={r.r:.2f}" for r in corr.itertuples() if r.x == x and r.y == y} if len(corr) else {}


def _clinical_section(st: _Study) -> Section:
    """χ against GM in every ROI, ROI values against the clinical scores in the patients, the tables."""
    corr = _read(st.tables / "correlations.csv")
    roi_long = _read(st.tables / "roi_values.csv")
    groups = list(st.spec.groups)
    blocks = []
    if len(roi_long) and len(st.used):
        from ferritin.stats.findings import roi_wide

        frame = st.used.join(roi_wide(roi_long), how="inner")
        patients = st.spec.clinical.patient_group
        for roi in roi_long["roi"].unique():
            x, y = f"chi:{roi}", f"gm_mod_s:{roi}"
            if x in frame and y in frame:
                png = figures.scatter(frame, x, y, "group", groups, f"χ {roi} (ppm)", f"GM {roi}", _r_text(corr, x, y))
                blocks.append(figure(png, f"χ vs modulated GM in {roi}"))
            for score in ("alsfrs_r", "umn"):
                for m in ("chi", "gm_mod_s"):
                    col = f"{m}:{roi}"
                    if score not in frame or col not in frame:
                        continue
                    label, score_label = _LABELS.get(m, m), _LABELS.get(score, score)
                    png = figures.scatter(frame, col, score, "group", [patients], f"{label} {roi}", score_label,
                                          _r_text(corr, col, score))
                    blocks.append(figure(png, f"{label} in {roi} vs {score_label} ({patients})"))
    blocks.append(table(corr, "Correlations: Pearson R (one-tailed p in the expected direction, two-tailed p), "
                              "partial R, FDR q over the family"))
    blocks.append(table(_read(st.tables / "normality.csv"), "Normality (Lilliefors)"))
    notes = _read(st.tables / "notes.csv")
    if len(notes):
        blocks.append(table(notes, "Notes on the clinical data"))
    return Section("clinical", "Clinical associations", blocks)


def _planted_section(st: _Study) -> Section | None:
    """A simulated cohort scored against its planted effects (tables written by the scoring step)."""
    planted = _read(st.tables / "planted_effects.csv")
    if not len(planted):
        return None
    blocks = [table(planted, "Each planted effect and contrast: the lowest corrected p within 10 mm of the planted "
                             "peak (SVC or whole brain); empty where nothing was found",
                    source="tables/planted_effects.csv")]
    planted_roi = _read(st.tables / "planted_effects_roi.csv")
    if len(planted_roi):
        blocks.append(table(planted_roi, "ROIs near a planted peak: difference of the adjusted group means and "
                                         "ANCOVA p", source="tables/planted_effects_roi.csv"))
    return Section("planted", "Planted effects (simulated cohort)", blocks)


def _reproduction_section(st: _Study) -> Section | None:
    """The reference study's headline table beside this run's (or these seeds') values, and the bars."""
    rep = _read(st.tables / "reproduction.csv")
    if not len(rep):
        return None
    seeds = [c for c in rep.columns if c.startswith("seed ")]
    shown = rep.drop(columns=["key", "kind"] + (seeds if len(seeds) > 3 else []), errors="ignore")
    blocks = [text(f"Every number of the reference study's results (Li et al. 2022) beside ferritin's on "
                   f"{len(seeds)} simulated cohort{'s' if len(seeds) != 1 else ''} of the same design, each run "
                   f"through the whole study (mean and s.d. over the seeds).  Voxel counts are in voxels of 1 mm "
                   f"(mm³) whatever the grid; P values stated as bounds in the paper are given at the bound; a P_SVC "
                   f"of 1 means that no voxel of the region passed the height threshold."),
              table(shown, "Published and measured", source="tables/reproduction.csv")]
    power = _read(st.tables / "reproduction_power.csv")
    if len(power):
        blocks.append(table(power, "The published findings at this cohort's size: the expected (published) T, "
                                   "the T a corrected P < 0.05 needs at this df, the power that gives, and what was "
                                   "measured", source="tables/reproduction_power.csv"))
    bars = _read(st.tables / "reproduction_bars.csv")
    if len(bars):
        blocks.append(table(bars, f"The reproduction's bars: {int(bars['met'].sum())} of {len(bars)} met",
                            source="tables/reproduction_bars.csv"))
    return Section("reproduction", "Reproduction of the reference study", blocks)


def _qc_section(st: _Study, all_subjects: list[str]) -> Section:
    """QC scores, mask and normalisation montages, the excluded subjects and every subject's QC row."""
    qc = _subject_qc(st.store, all_subjects)
    min_corr = st.spec.qc.min_gm_correlation
    blocks = []
    if len(qc):
        blocks.append(figure(figures.qc_scores(qc["qc_gm_corr"], min_corr, set(st.excluded)),
                             "Normalisation QC: GM correlation with the template (red: excluded)"))
    order = list(qc.sort_values("qc_gm_corr").index) if len(qc) else []
    masks, norms = _qc_panels(st.store, order, st.template)
    if masks:
        blocks.append(figure(figures.overlay_montage(masks, "QSM brain mask on the first-echo magnitude"),
                             "QSM masks (lowest QC first)"))
    if norms:
        blocks.append(figure(figures.overlay_montage(norms, "warped modulated GM, template GM outline (z = 5 mm)"),
                             "Normalisation overlays (lowest QC first)"))
    blocks.append(table(pd.DataFrame(sorted(st.excluded.items()), columns=["subject", "reason"]), "Excluded subjects"))
    for sub, png in _subject_qc_figures(st.store, order, st.template, st.excluded):
        blocks.append(figure(png, f"{sub}: T1 with GM (red) and WM (blue) outlines; the T1 after normalisation with "
                                  f"the template brain outline (yellow); χ; R2*"))
    blocks.append(table(qc.reset_index(), "Per-subject QC"))
    return Section("qc", "Quality control", blocks)


def _methods_section(st: _Study, all_subjects: list[str]) -> Section:
    """The methods written from the parameters recorded with the results."""
    described = list(st.used.index) if len(st.used) else all_subjects
    qrec = next((r for s in described if (r := st.store.record(f"derived/{s}/qsm"))), None)
    arec = next((r for s in described if (r := st.store.record(f"derived/{s}/anat"))), None)
    chains = [st.store.open_node(f"derived/{s}/qsm").attrs.get("chain", {}) for s in described
              if st.store.record(f"derived/{s}/qsm") is not None]
    paragraphs = methods_text(st.spec, (qrec or {}).get("params", {}), (arec or {}).get("params", {}),
                              len(st.used), len(st.excluded), [c for c in chains if c])
    return Section("methods", "Methods", [text(p) for p in paragraphs])


def _compute_times(store: CohortStore, subjects) -> pd.DataFrame:
    """Wall time of each per-subject stage as recorded with its outputs: median, range and total."""
    rows = []
    for stage in ("anat", "qsm"):
        seconds = stage_seconds(store, stage, subjects)
        if seconds:
            rows.append({"stage": {"anat": "anatomy", "qsm": "QSM"}[stage], "subjects": len(seconds),
                         "median (s)": float(np.median(seconds)), "fastest (s)": min(seconds),
                         "slowest (s)": max(seconds), "total (h)": sum(seconds) / 3600})
    return pd.DataFrame(rows, columns=["stage", "subjects", "median (s)", "fastest (s)", "slowest (s)", "total (h)"])


def _software_section(st: _Study, versions: dict, all_subjects: list[str]) -> Section:
    blocks = [table(pd.DataFrame(list(versions.items()), columns=["software", "version"]))]
    times = _compute_times(st.store, all_subjects)
    if len(times):
        blocks.append(table(times, "Processing time per subject (each subject on one worker)"))
    return Section("software", "Software", [*blocks, heading("Study spec"), Block("pre", st.spec.to_yaml())])


def build_report(out_dir: str | Path, store_path: str | Path | None = None) -> Path:
    """Write ``<out_dir>/report.html`` from the outputs of the group level and return its path."""
    st = _open_study(out_dir, store_path)
    all_subjects = st.store.children("native") if st.store.exists("native") else []
    versions = software_versions()
    sections = [_findings_section(st), _table1_section(st), _maps_section(st), _roi_section(st),
                _nuclei_section(st), _clinical_section(st), _planted_section(st), _reproduction_section(st), _qc_section(st, all_subjects),
                _methods_section(st, all_subjects), _software_section(st, versions, all_subjects)]
    page = _environment().get_template("report.html.j2").render(
        study=st.spec.name, n_used=len(st.used), n_excluded=len(st.excluded),
        generated=_dt.datetime.now().strftime("%Y-%m-%d %H:%M"), version=versions["ferritin"],
        warnings=st.run.get("warnings", []), sections=[s for s in sections if s is not None])
    path = st.out / "report.html"
    tmp = st.out / ".report.html.part"  # written whole, then renamed: a reader never sees half a page
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(path)
    return path


def _environment():
    import jinja2

    return jinja2.Environment(loader=jinja2.PackageLoader("ferritin.engine.report", "templates"),
                              autoescape=True, undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
