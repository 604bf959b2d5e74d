"""``report.html``: the study as a paper would report it, in one offline file.

:func:`build_report` reads what the group level wrote — the cohort store
(``/stats``, ``/roi``, per-subject QC attributes), ``tables/*.csv`` and
``spec.yaml`` — and writes a self-contained HTML page: every figure is an
embedded PNG, the style is inline, nothing is fetched from anywhere.  It can
be rebuilt at any time with ``ferritin report OUTPUT_DIR``.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import platform
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from ferritin.cohort.store import CohortStore
from ferritin.cohort.templates import load_template

from . import figures

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


def _img(png: bytes, alt: str) -> str:
    return (f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,'
            f'{base64.b64encode(png).decode()}"><figcaption>{html.escape(alt)}</figcaption></figure>')


def _fmt(v) -> str:
    if isinstance(v, (float, np.floating)):
        if not np.isfinite(v):
            return "" if np.isnan(v) else ("∞" if v > 0 else "−∞")
        a = abs(v)
        if a != 0 and (a < 1e-3 or a >= 1e5):
            return f"{v:.2e}"
        return f"{v:.3f}" if a < 10 else f"{v:.1f}"
    return html.escape(str(v))


def _whole(col: pd.Series) -> bool:
    """A numeric column of counts (whole numbers, NaN allowed) is shown without decimals."""
    v = pd.to_numeric(col, errors="coerce")
    v = v[np.isfinite(v)] if v.dtype.kind == "f" else v.dropna()
    return col.dtype.kind in "if" and len(v) > 0 and bool((v == np.round(v)).all()) and bool((v.abs() < 1e6).all())


def _table(df: pd.DataFrame, caption: str = "", max_rows: int | None = None, source: str = "") -> str:
    if df is None or not len(df):
        return f"<p class='empty'>{html.escape(caption)}: nothing to show.</p>"
    more = ""
    if max_rows is not None and len(df) > max_rows:
        more = (f"<p class='empty'>{len(df) - max_rows} more rows in <code>{html.escape(source)}</code>.</p>")
        df = df.iloc[:max_rows]
    counts = {c for c in df.columns if _whole(df[c])}
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    body = "".join("<tr>" + "".join(f"<td>{int(v) if c in counts and np.isfinite(v) else _fmt(v)}</td>"
                                    for c, v in zip(df.columns, row)) + "</tr>"
                   for row in df.itertuples(index=False))
    cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
    return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{more}"


def _read(path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path)
    except (FileNotFoundError, pd.errors.EmptyDataError):
        return pd.DataFrame()


def methods_text(spec: dict, qsm_params: dict, anat_params: dict, n_used: int, n_excluded: int) -> str:
    """A methods paragraph written from the parameters the results were computed with."""
    q, a, inf = qsm_params, anat_params, spec["inference"]
    combine = {"phase-difference": "complex echo differences refined with every echo and one spatial unwrap",
               "laplacian-wls": "weighted least-squares frequency fit after Laplacian unwrapping",
               "laplacian-te": "TE-weighted Laplacian combination", "path-wls": "weighted least-squares fit "
               "after exact path-following unwrapping", "nonlinear": "nonlinear complex fit"}.get(
        q.get("combine", ""), q.get("combine", "?"))
    inversion = {"tv": f"total-variation regularised inversion (ADMM, λ = {q.get('tv_lambda', '?')})",
                 "tkd": f"truncated k-space division (threshold {q.get('tkd_threshold', '?')})",
                 "ilsqr": "iLSQR", "star": "STAR-QSM two-level sparse inversion"}.get(
        q.get("inversion", ""), q.get("inversion", "?"))
    mask = ("a brain mask was computed from the magnitude within the T1's brain mask carried to the GRE grid by "
            "the rigid coregistration" if q.get("mask_source", "t1") == "t1"
            else "a brain mask was computed from the magnitude")
    svc = ", ".join(s.get("region") or s["name"] for s in spec.get("svc", []))
    covs = " and ".join(spec["covariates"]) or "no covariates"
    text = [
        f"Multi-echo GRE phase was combined across echoes by {combine}; {mask}; background fields were removed with V-SHARP (spheres from {q.get('vsharp_max_radius_mm', '?')} mm, "
        f"truncation {q.get('vsharp_threshold', '?')}); susceptibility was estimated by {inversion} with the B0 "
        f"direction taken from the image affine and referenced to the whole-brain mean.",
        f"T1-weighted images were bias-corrected (N4, shrink {a.get('n4_shrink', '?')}) and segmented into GM, WM "
        f"and CSF (Atropos with MNI priors, prior weight {a.get('seg_prior_weight', '?')}); TIV was the volume of the "
        f"reverse-normalised intracranial mask. The first-echo magnitude was rigidly registered to the T1 "
        f"(mutual information) and each T1 normalised to MNI space with SyN ({a.get('syn_metric', '?')}, "
        f"iterations {a.get('syn_iterations', '?')}); χ maps were carried to MNI through the composed transforms "
        f"with one interpolation, at {spec.get('mni_voxel_size', 2)} mm. Warped GM was modulated by the Jacobian "
        f"determinant and smoothed with a {a.get('vbm_fwhm_mm', '?')} mm FWHM Gaussian. Subjects were excluded "
        f"whose warped GM or T1 correlated poorly with the template's, whose TIV or GM share of TIV lay outside "
        f"adult ranges, or whose brain mask did not reach the top of the head (criteria in the study spec).",
        f"Group differences were tested voxelwise with a general linear model ({' vs '.join(spec['groups'])}) with "
        f"{covs} as covariates of no interest, on {n_used} subjects ({n_excluded} excluded). Smoothness was "
        f"estimated from standardised residuals and p-values corrected with random field theory as in SPM12; "
        f"small-volume correction used {spec['svc'][0].get('radius_mm', 20) if spec.get('svc') else 20} mm spheres "
        f"around the regional peak intersected with the AAL regions ({svc}); the cluster-forming threshold was "
        f"P < {inf.get('height_p')} uncorrected with an extent of {inf.get('extent_voxels')} mm³.",
        "Mean χ and modulated GM were extracted per subject from the significant clusters; group differences of the "
        "ROI values were tested by ANCOVA with TIV, associations by Pearson and partial correlation (one-tailed in "
        "the hypothesised direction, two-tailed also given, Benjamini–Hochberg FDR across the family), sex by "
        "chi-squared, age by two-sample t, and normality by the Lilliefors test.",
    ]
    return "".join(f"<p>{html.escape(t)}</p>" for t in text)


_STYLE = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}h3{font-size:1.05em}
table{border-collapse:collapse;font-size:.8em;margin:.8em 0}caption{text-align:left;font-weight:600;padding:.3em 0}
th,td{border:1px solid #ddd;padding:.25em .5em;text-align:right}th{background:#f4f4f4}
td:first-child,th:first-child{text-align:left}figure{display:inline-block;margin:.5em;vertical-align:top}
figure img{max-width:100%}figcaption{font-size:.75em;color:#555}.empty{color:#777;font-style:italic}
.finding{background:#f7fbff;border-left:3px solid #2471a3;padding:.4em .8em;margin:.3em 0}
nav a{margin-right:1em}code{font-size:.85em}
.warning{background:#fdf2e9;border-left:3px solid #d35400;padding:.4em .8em}
"""

_CHECK = """
<p id="render-check">figures not checked</p>
<script>
window.addEventListener('load', function () {
  var imgs = document.images, ok = 0;
  for (var i = 0; i < imgs.length; i++) { if (imgs[i].complete && imgs[i].naturalWidth > 0) ok++; }
  document.getElementById('render-check').textContent = 'figures rendered: ' + ok + '/' + imgs.length;
});
</script>
"""


def _subject_qc(store: CohortStore, subjects) -> pd.DataFrame:
    rows = []
    for sub in subjects:
        if store.record(f"derived/{sub}/anat") is None:
            continue
        a = store.open_node(f"derived/{sub}/anat").attrs
        row = {"subject": sub, "qc_gm_corr": a["qc_gm_corr"], "qc_dice": a["qc_dice"], "tiv_ml": a["tiv_ml"]}
        for key in ("qc_t1_corr", "qc_brain_top_gap_mm", "gm_ml", "wm_ml", "csf_ml"):
            row[key] = a.get(key)
        rows.append(row)
    columns = ["subject", "qc_gm_corr", "qc_t1_corr", "qc_dice", "tiv_ml", "gm_ml", "wm_ml", "csf_ml",
               "qc_brain_top_gap_mm"]
    return pd.DataFrame(rows, columns=columns).set_index("subject")


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
                None if qsm is None else qsm["qsm_mask"].values > 0, prep.get("brain_centre_mm"), verdict)
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


def build_report(out_dir: str | Path, store_path: str | Path | None = None) -> Path:
    """Write ``<out_dir>/report.html`` from the outputs of the group level and return its path."""
    out = Path(out_dir)
    tables = out / "tables"
    if not (out / "spec.yaml").exists() or not tables.is_dir():
        raise FileNotFoundError(f"{out} has no group-level results (spec.yaml, tables/): run the group level first")
    spec = yaml.safe_load((out / "spec.yaml").read_text())
    run = json.loads((out / "group" / "run.json").read_text()) if (out / "group" / "run.json").exists() else {}
    if store_path is None and run:
        store_path = run["store"]
    store = CohortStore(store_path or out / "cohort.zarr")
    vs = float(spec.get("mni_voxel_size", 2.0))
    template = load_template(vs)
    grid = template.grid
    groups = list(spec["groups"])
    excluded = json.loads((tables / "excluded.json").read_text()) if (tables / "excluded.json").exists() else {}
    used = _read(tables / "subjects.csv")
    used = used.set_index("subject") if len(used) else used
    parts = []
    nav = []

    def section(anchor: str, title: str, body: str) -> None:
        nav.append(f'<a href="#{anchor}">{html.escape(title)}</a>')
        parts.append(f'<section id="{anchor}"><h2>{html.escape(title)}</h2>{body}</section>')

    # findings in words, first
    findings = []
    stats_nodes = {}
    for c in spec["contrasts"]:
        name = c["name"]
        if not store.exists(f"stats/{name}"):
            continue
        stats_nodes[name] = store.open_node(f"stats/{name}").load()
        svc = _read(tables / f"{name}_svc.csv")
        if "p_fwe" in svc.columns and len(svc):
            best = svc.sort_values("p_fwe").groupby("svc", sort=False).head(1)
            for _, r in best.iterrows():
                verdict = "significant" if r.p_fwe < float(spec["inference"].get("svc_alpha", 0.05)) else "not significant"
                findings.append(f"<div class='finding'><b>{html.escape(name)}</b> in {html.escape(r.svc)}: peak "
                                f"({r.x:.0f}, {r.y:.0f}, {r.z:.0f}) mm, T = {r['T']:.2f}, p(FWE-SVC) = {_fmt(r.p_fwe)} "
                                f"— {verdict}</div>")
    n_used = len(used)
    versions = software_versions()
    head = (f"<h1>{html.escape(str(spec.get('name', 'study')))}: QSM and VBM group study</h1>"
            f"<p>{n_used} subjects in the group statistics, {len(excluded)} excluded; generated "
            f"{_dt.datetime.now().strftime('%Y-%m-%d %H:%M')} by ferritin {versions['ferritin']}.</p>"
            + "".join(f"<p class='warning'><b>Warning:</b> {html.escape(w)}</p>" for w in run.get("warnings", [])))
    section("findings", "Findings", "".join(findings) or "<p class='empty'>No small-volume result.</p>")

    # Table 1
    t1 = _read(tables / "table1.csv")
    section("table1", "Table 1: participants", _table(t1, "Demographics and clinical scores by group "
                                                          "(t test; sex: Pearson chi-squared)"))

    # maps and cluster tables
    body = []
    for c in spec["contrasts"]:
        name = c["name"]
        if name not in stats_nodes:
            continue
        ds = stats_nodes[name]
        T = np.where(ds["mask"].values > 0, ds["T"].values, np.nan)
        u = float(ds.attrs["u"])
        body.append(f"<h3>{html.escape(name)}: {html.escape(c['map'])}, {html.escape(str(c['weights']))}</h3>"
                    f"<p>df = {ds.attrs['df']}, FWHM = {', '.join(f'{v:.1f}' for v in ds.attrs['fwhm_mm'])} mm, "
                    f"height threshold T ≥ {u:.2f} (P < {spec['inference'].get('height_p')}), whole-brain FWE "
                    f"threshold T ≥ {float(ds.attrs['fwe_threshold']):.2f}, extent ≥ {ds.attrs['k_voxels']} voxels.</p>")
        body.append(_img(figures.glass_brain(T, grid.affine, u, name), f"{name}: T map above {u:.2f} (glass brain)"))
        svc = _read(tables / f"{name}_svc.csv")
        if "p_fwe" in svc.columns and len(svc):
            for _, r in svc.sort_values("p_fwe").groupby("svc", sort=False).head(1).iterrows():
                if r.p_fwe < float(spec["inference"].get("svc_alpha", 0.05)):
                    body.append(_img(figures.stat_slices(T, grid.affine, template.t1, u, (r.x, r.y, r.z),
                                                         f"{name} {r.svc}"),
                                     f"{name}: peak of {r.svc} at ({r.x:.0f}, {r.y:.0f}, {r.z:.0f})"))
        body.append(_table(_read(tables / f"{name}_clusters.csv"), "Whole-brain clusters (extent rule applied)",
                           max_rows=15, source=f"tables/{name}_clusters.csv"))
        body.append(_table(svc, "Small-volume correction"))
        perm = _read(tables / f"{name}_permutation.csv")
        if len(perm):
            body.append(_table(perm, f"Permutation inference ({spec['inference'].get('permutations')} Freedman–Lane "
                                     "permutations): clusters at the same height threshold, FWE p by cluster mass, "
                                     "max-T and TFCE", max_rows=15, source=f"tables/{name}_permutation.csv"))
    section("maps", "Statistical maps and tables", "".join(body))

    # ROIs and the clinical statistics
    roi_sources = _read(tables / "roi_sources.csv")
    roi_groups = _read(tables / "roi_groups.csv")
    corr = _read(tables / "correlations.csv")
    body = [_table(roi_sources, "ROIs (clusters surviving correction, and spec regions)")]
    if len(roi_groups):
        for m in roi_groups["map"].unique():
            body.append(_img(figures.adjusted_bars(roi_groups, groups, m, _LABELS.get(m, m)),
                             f"{_LABELS.get(m, m)} by group, adjusted for {roi_groups['covariates'].iloc[0]} (mean ± s.e.)"))
        body.append(_table(roi_groups, "ROI values by group (ANCOVA)"))
    section("roi", "Regions of interest", "".join(body))

    body = []
    roi_long = _read(tables / "roi_values.csv")
    if len(roi_long) and len(used):
        from ferritin.stats.findings import roi_wide

        frame = used.join(roi_wide(roi_long), how="inner")
        cl = spec.get("clinical", {}) or {}
        patients = cl.get("patient_group", groups[0])
        for roi in roi_long["roi"].unique():
            x, y = f"chi:{roi}", f"gm_mod_s:{roi}"
            if x in frame and y in frame:
                txt = {r.group: f"R={r.r:.2f}" for r in corr.itertuples() if r.x == x and r.y == y} if len(corr) else {}
                body.append(_img(figures.scatter(frame, x, y, "group", groups, f"χ {roi} (ppm)", f"GM {roi}", txt),
                                 f"χ vs modulated GM in {roi}"))
            for score in ("alsfrs_r", "umn"):
                if score not in frame:
                    continue
                for m in ("chi", "gm_mod_s"):
                    col = f"{m}:{roi}"
                    if col not in frame:
                        continue
                    txt = {r.group: f"R={r.r:.2f}" for r in corr.itertuples() if r.x == col and r.y == score} \
                        if len(corr) else {}
                    body.append(_img(figures.scatter(frame, col, score, "group", [patients],
                                                     f"{_LABELS.get(m, m)} {roi}", _LABELS.get(score, score), txt),
                                     f"{_LABELS.get(m, m)} in {roi} vs {_LABELS.get(score, score)} ({patients})"))
    body.append(_table(corr, "Correlations: Pearson R (one-tailed p in the expected direction, two-tailed p), "
                             "partial R, FDR q over the family"))
    body.append(_table(_read(tables / "normality.csv"), "Normality (Lilliefors)"))
    notes = _read(tables / "notes.csv")
    if len(notes):
        body.append(_table(notes, "Notes on the clinical data"))
    section("clinical", "Clinical associations", "".join(body))

    # a simulated cohort knows where its effects were planted
    planted = _read(tables / "planted_effects.csv")
    if len(planted):
        body = [_table(planted, "Each planted effect and contrast: the lowest corrected p within 10 mm of the "
                                "planted peak (SVC or whole brain); empty where nothing was found",
                       source="tables/planted_effects.csv")]
        planted_roi = _read(tables / "planted_effects_roi.csv")
        if len(planted_roi):
            body.append(_table(planted_roi, "ROIs near a planted peak: difference of the adjusted group means "
                                            "and ANCOVA p", source="tables/planted_effects_roi.csv"))
        section("planted", "Planted effects (simulated cohort)", "".join(body))

    # QC
    all_subjects = store.children("native") if store.exists("native") else []
    qc = _subject_qc(store, all_subjects)
    min_corr = float(spec.get("qc", {}).get("min_gm_correlation", 0.0))
    body = []
    if len(qc):
        body.append(_img(figures.qc_scores(qc["qc_gm_corr"], min_corr, set(excluded)),
                         "Normalisation QC: GM correlation with the template (red: excluded)"))
    order = list(qc.sort_values("qc_gm_corr").index) if len(qc) else []
    masks, norms = _qc_panels(store, order, template)
    if masks:
        body.append(_img(figures.overlay_montage(masks, "QSM brain mask on the first-echo magnitude"),
                         "QSM masks (lowest QC first)"))
    if norms:
        body.append(_img(figures.overlay_montage(norms, "warped modulated GM, template GM outline (z = 5 mm)"),
                         "Normalisation overlays (lowest QC first)"))
    exc = pd.DataFrame(sorted(excluded.items()), columns=["subject", "reason"])
    body.append(_table(exc, "Excluded subjects"))
    for sub, png in _subject_qc_figures(store, order, template, excluded):
        body.append(_img(png, f"{sub}: T1 with GM (red) and WM (blue) outlines; the T1 after normalisation with "
                              f"the template brain outline (yellow); χ"))
    body.append(_table(qc.reset_index(), "Per-subject QC"))
    section("qc", "Quality control", "".join(body))

    # methods and software
    qrec = next((r for s in all_subjects if (r := store.record(f"derived/{s}/qsm"))), None)
    arec = next((r for s in all_subjects if (r := store.record(f"derived/{s}/anat"))), None)
    section("methods", "Methods", methods_text(spec, (qrec or {}).get("params", {}), (arec or {}).get("params", {}),
                                                n_used, len(excluded)))
    versions_table = pd.DataFrame(list(versions.items()), columns=["software", "version"])
    section("software", "Software", _table(versions_table) + "<h3>Study spec</h3><pre>"
            + html.escape(yaml.safe_dump(spec, sort_keys=False)) + "</pre>")

    page = (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>ferritin report: "
            f"{html.escape(str(spec.get('name', 'study')))}</title><style>{_STYLE}</style></head><body>"
            f"{head}<nav>{''.join(nav)}</nav>{''.join(parts)}{_CHECK}</body></html>")
    path = out / "report.html"
    tmp = out / ".report.html.part"
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(path)
    return path

