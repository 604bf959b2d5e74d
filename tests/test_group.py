"""Group level on a store with known maps: ROIs where the effect was planted,
tables equal to scipy/statsmodels on the written CSVs, BIDS derivatives, and
a self-contained report that a real browser renders."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy import stats
from synthetic_group import PLANT_MM, VS, uncovered_patch, write_group_store

from ferritin.cohort.store import CohortStore
from ferritin.cohort.templates import load_template
from ferritin.engine.pipeline import run_group

pytestmark = pytest.mark.slow  # one group level on a synthetic store, with permutations and the report (~2 min)

N_PER_GROUP = 9


@pytest.fixture(scope="module")
def group_out(tmp_path_factory):
    root = tmp_path_factory.mktemp("group")
    store = CohortStore(root / "cohort.zarr", create=True)
    subjects, spec = write_group_store(store, N_PER_GROUP)
    spec["inference"].update(permutations=40, tfce=True)
    spec["contrasts"].append({"name": "r2star_als_gt_nc", "map": "r2star", "weights": "ALS - NC"})
    out = root / "out"
    res = run_group(store.path, spec, out)
    return out, res, subjects


def test_planted_effect_becomes_an_roi(group_out):
    out, res, _ = group_out
    rois = pd.read_csv(out / "tables" / "roi_sources.csv")
    chi_rois = rois[rois.contrast == "chi_als_gt_nc"]
    assert "chi_als_gt_nc_thalamus_L" in set(chi_rois.roi)
    row = chi_rois.set_index("roi").loc["chi_als_gt_nc_thalamus_L"]
    assert np.linalg.norm(row[["x", "y", "z"]].to_numpy(float) - PLANT_MM) <= 10
    # nothing was planted in the right precentral gyrus
    svc = pd.read_csv(out / "tables" / "chi_als_gt_nc_svc.csv")
    pre = svc[svc.svc == "precentral_R"]
    assert pre.empty or "p_fwe" not in pre or not (pre.p_fwe < 0.05).any()
    assert "sphere_R_putamen" in set(rois.roi)


def test_r2star_is_a_map_a_contrast_can_test(group_out):
    """R2* rises with the planted iron: its contrast finds the plant where χ's does."""
    out, res, _ = group_out
    peaks = pd.read_csv(out / "tables" / "r2star_als_gt_nc_svc.csv")
    best = peaks[peaks.svc == "thalamus_L"].sort_values("T", ascending=False).iloc[0]
    assert best.p_fwe < 0.05
    assert np.linalg.norm(best[["x", "y", "z"]].to_numpy(float) - PLANT_MM) <= 10


def test_deep_grey_table_per_subject_and_region(group_out):
    """tables/nuclei.csv and /nuclei hold every used subject's fourteen structures; the planted iron of the
    left thalamus shows in the patients' means; each mean is the direct mean of the eroded label."""
    out, res, subjects = group_out
    table = pd.read_csv(out / "tables" / "nuclei.csv")
    used = res.subjects
    assert list(table.columns) == ["subject", "group", "region", "map", "n", "mean", "median", "sd"]
    assert set(table.subject) == set(used) and len(table) == len(used) * 14 * 3
    chi = table[(table["map"] == "chi") & (table.region == "Thalamus_L")].set_index("subject")
    assert chi.loc[chi.group == "ALS", "mean"].mean() > chi.loc[chi.group == "NC", "mean"].mean() + 0.005
    cohort = CohortStore(out.parent / "cohort.zarr").open_node("nuclei")
    assert cohort["nuclei"].dims == ("subject", "region", "map", "statistic")
    first = used[0]
    assert float(cohort["nuclei"].sel(subject=first, region="Thalamus_L", map="chi", statistic="mean")) == \
        pytest.approx(chi.loc[first, "mean"], rel=1e-5)
    from ferritin.engine.anat.labels import erode_labels
    from ferritin.engine.nuclei import deep_grey_atlas

    tpl = load_template(VS)
    labels, names = deep_grey_atlas(tpl)
    region = erode_labels(labels, 1) == names.index("Thalamus_L") + 1
    chi_map = CohortStore(out.parent / "cohort.zarr").open_node(f"derived/{first}/qsm")["chi_mni"].values
    assert chi.loc[first, "mean"] == pytest.approx(np.nanmean(chi_map[region]), rel=1e-4)


def test_qc_failure_is_excluded_with_reason(group_out):
    out, res, subjects = group_out
    excluded = json.loads((out / "tables" / "excluded.json").read_text())
    assert list(excluded) == [subjects[-1]] and "QC" in excluded[subjects[-1]]
    assert subjects[-1] not in set(pd.read_csv(out / "tables" / "roi_values.csv").subject)


def test_roi_values_equal_direct_means(group_out):
    out, _, _ = group_out
    store = CohortStore(out.parent / "cohort.zarr")
    masks = nib.load(out / "group" / "desc-roi_mask.nii.gz").get_fdata() > 0
    names = pd.read_csv(out / "group" / "desc-roi_dseg.tsv", sep="\t").set_index("index")["name"]
    assert masks.shape[-1] == len(names) >= 2
    values = pd.read_csv(out / "tables" / "roi_values.csv")
    sub = values.subject.iloc[0]
    nodes = {"chi_mni": store.open_node(f"derived/{sub}/qsm").load(), "gm_mod_s": store.open_node(f"derived/{sub}/anat").load()}
    for code, name in names.items():
        m = masks[..., code - 1]
        for var, mapname in (("chi_mni", "chi"), ("gm_mod_s", "gm_mod_s")):
            want = np.nanmean(nodes[var][var].values[m])
            got = values[(values.subject == sub) & (values.roi == name) & (values["map"] == mapname)]["value"].item()
            assert got == pytest.approx(want, rel=1e-6)


def test_roi_node_keeps_overlapping_masks(group_out):
    """The store's /roi node holds every ROI's own mask, so ROIs that overlap
    (an SVC peak inside a whole-brain cluster) are not lost to the label image."""
    out, _, _ = group_out
    roi = CohortStore(out.parent / "cohort.zarr").open_node("roi").load()
    masks = nib.load(out / "group" / "desc-roi_mask.nii.gz").get_fdata() > 0
    assert roi["roi_mask"].dims == ("roi", "x", "y", "z")
    np.testing.assert_array_equal(np.moveaxis(roi["roi_mask"].values, 0, -1), masks)
    assert all(roi["roi_mask"].sel(roi=name).any() for name in roi["roi"].values)
    # a user's query: the ROI value of a subject is the mean of its map over the stored mask
    mni = CohortStore(out.parent / "cohort.zarr").open_node("mni")
    name, subject = str(roi["roi"].values[0]), str(roi["subject"].values[0])
    chi = mni["chi"].sel(subject=subject).values
    want = np.nanmean(chi[roi["roi_mask"].sel(roi=name).values])
    assert float(roi["chi"].sel(subject=subject, roi=name)) == pytest.approx(want, rel=1e-6)


def _frame(out):
    values = pd.read_csv(out / "tables" / "roi_values.csv")
    wide = values.pivot_table(index="subject", columns=["map", "roi"], values="value")
    wide.columns = [f"{m}:{r}" for m, r in wide.columns]
    return pd.read_csv(out / "tables" / "subjects.csv").set_index("subject").join(wide)


def test_table_one_equals_scipy(group_out):
    out, _, _ = group_out
    d = _frame(out)
    t1 = pd.read_csv(out / "tables" / "table1.csv").set_index("variable")
    als, nc = d[d.group == "ALS"], d[d.group == "NC"]
    for var in ("age", "tiv"):
        ref = stats.ttest_ind(als[var], nc[var])
        assert t1.loc[var, "statistic"] == pytest.approx(ref.statistic, rel=1e-9)
        assert t1.loc[var, "p"] == pytest.approx(ref.pvalue, rel=1e-9)
        assert t1.loc[var, "ALS mean"] == pytest.approx(als[var].mean())
    chi2, p, _, _ = stats.chi2_contingency(pd.crosstab(d.group, d.sex).to_numpy(), correction=False)
    assert t1.loc["sex", "statistic"] == pytest.approx(chi2) and t1.loc["sex", "p"] == pytest.approx(p)
    assert np.isnan(t1.loc["alsfrs_r", "p"])  # patients only: described, not tested


def test_correlations_equal_scipy(group_out):
    out, _, _ = group_out
    d = _frame(out)
    corr = pd.read_csv(out / "tables" / "correlations.csv")
    assert len(corr) > 4
    for r in corr.itertuples():
        sub = d[d.group == r.group][[r.x, r.y, "age"]].dropna()
        ref = stats.pearsonr(sub[r.x], sub[r.y])
        assert r.r == pytest.approx(ref.statistic, rel=1e-9) and r.p_two_tailed == pytest.approx(ref.pvalue, rel=1e-9)
        if r.expected in ("positive", "negative"):
            alt = "greater" if r.expected == "positive" else "less"
            assert r.p_one_tailed == pytest.approx(stats.pearsonr(sub[r.x], sub[r.y], alternative=alt).pvalue,
                                                   rel=1e-9)
        # partial correlation on age = correlation of the residuals
        C = np.column_stack([np.ones(len(sub)), sub["age"]])
        res = [sub[c] - C @ np.linalg.lstsq(C, sub[c], rcond=None)[0] for c in (r.x, r.y)]
        assert r.partial_r == pytest.approx(np.corrcoef(*res)[0, 1], rel=1e-9)
    # the planted effect: χ in the thalamic ROI rises with UMN in patients
    row = corr[(corr.x == "chi:chi_als_gt_nc_thalamus_L") & (corr.y == "umn")].iloc[0]
    assert row.r > 0.5 and row.p_one_tailed < 0.05


def test_roi_ancova_equals_statsmodels(group_out):
    import statsmodels.formula.api as smf

    out, _, _ = group_out
    d = _frame(out)
    g = pd.read_csv(out / "tables" / "roi_groups.csv")
    for r in g.itertuples():
        col = f"{r.map}:{r.roi}"
        dd = d[[col, "group", "tiv"]].rename(columns={col: "v"}).dropna()
        dd["group"] = pd.Categorical(dd.group, categories=["ALS", "NC"])
        fit = smf.ols("v ~ C(group) + tiv", data=dd).fit()
        assert r.t == pytest.approx(fit.tvalues["C(group)[T.NC]"], rel=1e-9)
        assert r.p == pytest.approx(fit.pvalues["C(group)[T.NC]"], rel=1e-9)
    thal = g[(g.roi == "chi_als_gt_nc_thalamus_L") & (g["map"] == "gm_mod_s")].iloc[0]
    assert thal["ALS adj mean"] < thal["NC adj mean"]


def test_bids_derivatives(group_out):
    out, res, subjects = group_out
    desc = json.loads((out / "dataset_description.json").read_text())
    assert desc["DatasetType"] == "derivative"
    sub = subjects[0]
    store = CohortStore(out.parent / "cohort.zarr")
    chi = nib.load(out / sub / "anat" / f"{sub}_Chimap.nii.gz")
    assert np.array_equal(chi.get_fdata(dtype=np.float32), store.open_node(f"derived/{sub}/qsm")["chi"].values)
    mni = nib.load(out / sub / "anat" / f"{sub}_space-MNI152NLin2009cSym_res-3mm_Chimap.nii.gz")
    assert np.allclose(mni.affine, load_template(VS).grid.affine)
    tmap = nib.load(out / "group" / "contrast-chi_als_gt_nc_stat-t_statmap.nii.gz")
    side = json.loads((out / "group" / "contrast-chi_als_gt_nc_stat-t_statmap.json").read_text())
    assert tmap.shape == load_template(VS).grid.shape and side["df"] == res.contrasts["chi_als_gt_nc"].df
    # exporting again rewrites nothing (the sidecar digest matches)
    from ferritin.engine.derivatives import export_subject

    assert export_subject(store, sub, out, VS) == []



def test_subject_export_on_dask_workers_writes_the_same_bytes(group_out, tmp_path):
    """The workers encode, this process writes: the same files, byte for byte, as exporting in one process."""
    from distributed import Client, LocalCluster

    from ferritin.engine.derivatives import export_subjects

    out, _, subjects = group_out
    store = CohortStore(out.parent / "cohort.zarr")
    here = export_subjects(store, subjects, tmp_path / "here", VS)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0") as lc, \
            Client(lc) as client:
        there = export_subjects(store, subjects, tmp_path / "there", VS, client)
        assert export_subjects(store, subjects, tmp_path / "there", VS, client) == []
    # χ native and in MNI, the QSM mask, the deep-grey table, modulated GM and smoothed (no native R2* here)
    assert len(here) == 6 * len(subjects)
    assert [p.relative_to(tmp_path / "here") for p in here] == [p.relative_to(tmp_path / "there") for p in there]
    for a, b in zip(here, there):
        assert a.read_bytes() == b.read_bytes(), a.name

def test_report_is_self_contained(group_out):
    from ferritin.engine.report import build_report

    out, _, _ = group_out
    path = build_report(out)
    page = path.read_text()
    for section in ("Table 1", "Clinical associations", "Quality control", "Methods", "Software", "Excluded subjects"):
        assert section in page
    # no resource outside the file: every src is a data URI, no stylesheet or script links
    srcs = re.findall(r'src="([^"]*)"', page)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert not re.search(r'<link|src="http|href="http', page)
    assert "V-SHARP" in page and "Thalamus_L" in page
    assert "Processing time per subject" in page


def test_report_gives_the_recorded_processing_times(group_out):
    from ferritin.engine.report import _compute_times

    out, _, subjects = group_out
    times = _compute_times(CohortStore(out.parent / "cohort.zarr"), subjects).set_index("stage")
    n = len(subjects)  # subject k took 100 + k s of anatomy and 10 + k s of QSM; the first has no QSM time
    assert times.loc["anatomy", "subjects"] == n and times.loc["anatomy", "median (s)"] == 100 + (n - 1) / 2
    assert times.loc["QSM", "subjects"] == n - 1 and times.loc["QSM", "fastest (s)"] == 11
    assert times.loc["anatomy", "total (h)"] == pytest.approx(sum(100 + k for k in range(n)) / 3600)


@pytest.mark.skipif(not (shutil.which("chromium") or shutil.which("chromium-browser")),
                    reason="Chromium is not installed (make test installs it where apt-get works)")
def test_report_renders_in_chromium(group_out, tmp_path):
    from ferritin.engine.report import build_report

    out, _, _ = group_out
    path = build_report(out)
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path / 'profile'}",
           "--virtual-time-budget=10000", "--dump-dom", path.as_uri()]
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=180).stdout
    m = re.search(r"figures rendered: (\d+)/(\d+)", dom)
    assert m, "the page's load handler did not run"
    assert int(m.group(2)) >= 8 and m.group(1) == m.group(2)


def test_cli_report_rebuilds_and_refuses_an_empty_folder(group_out, tmp_path, capsys):
    from ferritin.engine.cli import main

    out, _, _ = group_out
    (out / "report.html").unlink(missing_ok=True)
    assert main(["report", str(out)]) == 0 and (out / "report.html").exists()
    assert main(["report", str(tmp_path)]) == 2
    assert "run the group level first" in capsys.readouterr().err


def test_permutation_tables_find_the_planted_cluster(group_out):
    out, _, _ = group_out
    perm = pd.read_csv(out / "tables" / "chi_als_gt_nc_permutation.csv")
    top = perm.iloc[0]  # largest cluster mass
    assert np.linalg.norm(top[["x", "y", "z"]].to_numpy(float) - PLANT_MM) <= 10
    assert top.p_fwe_cluster_mass <= 1 / 40 + 1e-12 and top.p_fwe_tfce <= 0.05  # nothing in 39 nulls beats it
    assert (perm.p_fwe_cluster_mass.iloc[1:] > 0.05).all() if len(perm) > 1 else True
    ds = CohortStore(out.parent / "cohort.zarr").open_node("stats/chi_als_gt_nc")
    assert {"p_fwe_max_t", "tfce", "p_fwe_tfce", "p_fwe_cluster_mass"} <= set(ds.data_vars)
    # the SPM-style cluster table carries each cluster's permutation p next to its RFT p
    rft = pd.read_csv(out / "tables" / "chi_als_gt_nc_clusters.csv")
    planted = rft.iloc[np.argmin(np.linalg.norm(rft[["x", "y", "z"]].to_numpy(float) - PLANT_MM, axis=1))]
    assert planted.cluster_p_fwe_perm == pytest.approx(top.p_fwe_cluster_mass)


def test_voxels_a_subject_does_not_cover_are_left_out_not_zero_filled(group_out):
    out, _, _ = group_out
    ds = CohortStore(out.parent / "cohort.zarr").open_node("stats/chi_als_gt_nc")
    grid = load_template(VS).grid
    hole = uncovered_patch(grid)
    assert not ds["mask"].values[hole].any()
    assert ds["mask"].values.sum() > 0.8 * load_template(VS).brain_mask.sum()


def test_recovery_finds_the_planted_effect_and_nothing_elsewhere(group_out):
    from ferritin.engine.recovery import planted_effect_recovery, roi_recovery

    _, res, _ = group_out
    planted = {"name": "plant", "region": "Thalamus_L", "peak_mni": PLANT_MM}
    elsewhere = {"name": "elsewhere", "region": "Precentral_R", "peak_mni": (40.0, -20.0, 55.0)}
    found = planted_effect_recovery(res, [planted, elsewhere]).set_index(["effect", "contrast"])
    hit = found.loc[("plant", "chi_als_gt_nc")]
    assert hit.found and hit.distance_mm <= 10 and hit.p_fwe < 0.05 and hit["T"] > 0
    assert found.loc[("plant", "gm_als_lt_nc")].found
    assert not found.loc["elsewhere"].found.any()
    assert found.loc["elsewhere"].p_fwe.isna().all()
    rois = roi_recovery(res, [planted, elsewhere])
    assert set(rois.effect) == {"plant"}
    gm = rois[(rois.roi == "chi_als_gt_nc_thalamus_L") & (rois["map"] == "gm_mod_s")].iloc[0]
    chi = rois[(rois.roi == "chi_als_gt_nc_thalamus_L") & (rois["map"] == "chi")].iloc[0]
    assert gm.difference < 0 and chi.difference > 0 and gm.p < 0.05 and chi.p < 0.05


def test_cli_prints_and_writes_the_recovery_of_planted_effects(group_out, capsys, tmp_path):
    from ferritin.engine.cli import _print_recovery

    out, res, _ = group_out
    _print_recovery(res, [{"name": "plant", "region": "Thalamus_L", "peak_mni": PLANT_MM}], out)
    text = capsys.readouterr().out
    assert re.search(r"plant / chi_als_gt_nc: (SVC thalamus_L|whole brain) peak .* p\(FWE\) = ", text)
    assert re.search(r"plant: ROI chi_als_gt_nc_\w+ gm_mod_s difference -", text)
    assert "corrected results farther than 10 mm from every planted peak: 0" in text
    _print_recovery(res, [{"name": "far", "region": "Cuneus_L", "peak_mni": (0.0, -90.0, 20.0)}], tmp_path)
    far = capsys.readouterr().out
    assert re.search(r"farther than 10 mm from every planted peak: [1-9]", far) and "T = " in far
    table = pd.read_csv(out / "tables" / "planted_effects.csv")
    assert table.found.all() and set(table.contrast) == {"chi_als_gt_nc", "r2star_als_gt_nc", "gm_als_lt_nc"}
    from ferritin.engine.report import build_report

    page = build_report(out).read_text()
    assert "Planted effects (simulated cohort)" in page and "<th>distance_mm</th>" in page
    _print_recovery(res, [], out)  # a cohort that is not simulated: nothing printed
    assert capsys.readouterr().out == ""


def test_scoring_is_a_step_of_its_own(group_out, tmp_path):
    from ferritin import score_planted_effects

    out, res, _ = group_out
    with pytest.raises(ValueError, match="no planted effects"):
        score_planted_effects(res, [], tmp_path)
    found, _ = score_planted_effects(res, [{"name": "plant", "region": "Thalamus_L", "peak_mni": PLANT_MM}], tmp_path)
    assert found.found.all() and (tmp_path / "tables" / "planted_effects.csv").exists()


def test_roi_dataset_with_nested_rois():
    from ferritin.engine.findings import roi_dataset

    grid = load_template(VS).grid
    outer = np.zeros(grid.shape, bool)
    outer[10:20, 10:20, 10:20] = True
    inner = np.zeros(grid.shape, bool)
    inner[12:15, 12:15, 12:15] = True
    masks = {"inner": inner, "outer": outer}  # the label image gives every inner voxel to "outer"
    long = pd.DataFrame({"subject": ["s1", "s1"], "roi": ["inner", "outer"], "map": ["chi", "chi"],
                         "value": [0.1, 0.2]})
    sources = pd.DataFrame({"roi": ["inner", "outer"], "source": ["SVC", "whole brain"]})
    ds = roi_dataset(long, masks, sources, grid)
    assert not (ds["roi_labels"].values == 1).any()
    np.testing.assert_array_equal(ds["roi_mask"].sel(roi="inner").values, inner)
    np.testing.assert_array_equal(ds["roi_mask"].sel(roi="outer").values, outer)
    assert float(ds["chi"].sel(subject="s1", roi="inner")) == 0.1


def test_few_degrees_of_freedom_are_warned_about(group_out):
    _, res, _ = group_out
    n = len(res.subjects)
    df = res.contrasts["chi_als_gt_nc"].df
    assert df < n
    warned = any("residual degrees of freedom" in w for w in res.warnings)
    assert warned == (df < 10), (df, res.warnings)
    out = group_out[0]
    assert json.loads((out / "group" / "run.json").read_text())["warnings"] == res.warnings


def test_reproduction_measures_the_paper_numbers_as_the_paper_did(group_out):
    """The headline-table numbers of a run equal direct computations on its maps and CSVs."""
    import statsmodels.formula.api as smf

    from ferritin.engine.reproduction import check_bars, findings_at_size, measure_run, summarise

    out, res, _ = group_out
    m = measure_run(out).set_index("key")
    T = nib.load(out / "group" / "contrast-chi_als_gt_nc_stat-t_statmap.nii.gz").get_fdata()
    mask = nib.load(out / "group" / "contrast-chi_als_gt_nc_mask.nii.gz").get_fdata() > 0
    region = load_template(VS).region("Thalamus_L") & mask
    assert m.loc["chi_T:thalamus_L", "ferritin"] == pytest.approx(T[region].max(), rel=1e-6)
    df = res.contrasts["chi_als_gt_nc"].df
    u = stats.t.isf(0.005, df)
    right = load_template(VS).region("Precentral_R") & mask
    assert m.loc["chi_vox:precentral_R", "ferritin"] == (T[right] > u).sum() * VS**3  # mm³: voxels of 1 mm
    assert m.loc["chi_vox:thalamus", "ferritin"] >= (T[region] > u).sum() * VS**3 > 0  # both thalami together
    svc = res.contrasts["chi_als_gt_nc"].svc["thalamus_L"]
    assert m.loc["chi_p:thalamus_L", "ferritin"] == pytest.approx(svc["p_fwe"].min())
    assert m.loc["chi_sig:thalamus_L", "ferritin"] == 1.0
    assert m.loc["chi_sig:precentral_R", "ferritin"] == 0.0  # nothing planted there
    # GM in the thalamic χ-cluster ROI: the ANCOVA of statsmodels on roi_values.csv (one ROI: thalamus_L)
    d = _frame(out)
    dd = d[["gm_mod_s:chi_als_gt_nc_thalamus_L", "group", "tiv"]].set_axis(["v", "group", "tiv"], axis=1).dropna()
    dd["group"] = pd.Categorical(dd.group, categories=["ALS", "NC"])
    fit = smf.ols("v ~ C(group) + tiv", data=dd).fit()
    assert m.loc["gm_T:thalamus", "ferritin"] == pytest.approx(-fit.tvalues["C(group)[T.NC]"], rel=1e-9)
    assert m.loc["gm_T:thalamus", "ferritin"] < -2  # the planted decrease
    assert np.isnan(m.loc["gm_T:precentral", "ferritin"])  # no precentral χ cluster, so no ROI
    pat = d[d.group == "ALS"]
    r = stats.pearsonr(pat["chi:chi_als_gt_nc_thalamus_L"], pat["alsfrs_r"])
    assert m.loc["R:chi thalamus vs ALSFRS-R", "ferritin"] == pytest.approx(r.statistic, rel=1e-9)
    assert m.loc["R_p:chi thalamus vs ALSFRS-R", "ferritin"] == pytest.approx(r.pvalue, rel=1e-9)  # two-tailed
    assert m.loc["age_mean:ALS", "ferritin"] == pytest.approx(d.loc[d.group == "ALS", "age"].mean())
    # two "seeds": mean, s.d. and the bars' arithmetic
    one = measure_run(out)
    other = one.assign(ferritin=one["ferritin"] + 1.0)
    s = summarise([one, other]).set_index("key")
    assert s.loc["chi_T:thalamus_L", "mean"] == pytest.approx(m.loc["chi_T:thalamus_L", "ferritin"] + 0.5)
    assert s.loc["chi_T:thalamus_L", "sd"] == pytest.approx(np.sqrt(0.5))
    bars = check_bars(summarise([one])).set_index("bar")
    assert not bars.filter(like="precentral_L", axis=0)["met"].any()  # nothing planted in the left precentral
    assert bars.loc["χ precentral_R: not significant in ≥ 1 of 1 seeds", "met"]
    power = findings_at_size(out, one).set_index("finding")
    assert power.loc["χ ↑ Thalamus_L", "reproduced"] and 0 < power.loc["χ ↑ Thalamus_L", "power"] < 1
    assert power.loc["χ ↑ Thalamus_L", "T needed"] > stats.t.isf(0.05, df)  # corrected needs more than uncorrected
    assert power.loc["GM ↓ thalamus (χ-cluster ROI)", "expected T"] == -4.10  # no reference effect planted
    from ferritin.cohort.simulate import PRESETS

    # had the demo's effects been planted: the calibration's expectation at this size, not the published T
    demo = findings_at_size(out, one, PRESETS["demo"].effects).set_index("finding")
    assert -4.10 < demo.loc["GM ↓ thalamus (χ-cluster ROI)", "expected T"] < 0
    assert 0 < demo.loc["χ ↑ Thalamus_R", "expected T"] < 6.38  # fewer subjects than the demo's ten


def test_demo_prints_which_published_findings_it_reproduces(group_out, tmp_path, capsys):
    from ferritin.engine.cli import _print_reproduction

    out, _, _ = group_out
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    _print_reproduction(copy)
    text = capsys.readouterr().out
    assert "χ ↑ Thalamus_L (significant): reproduced" in text
    assert "χ ↑ Precentral_L (significant): not reproduced" in text  # nothing planted there
    assert "χ ↑ Precentral_R (not significant): reproduced" in text
    power = pd.read_csv(copy / "tables" / "reproduction_power.csv")
    assert set(power["finding"]) >= {"χ ↑ Thalamus_R", "GM ↓ thalamus (χ-cluster ROI)"}
    assert pd.read_csv(copy / "tables" / "reproduction.csv")["key"].is_unique
    from ferritin.engine.report import build_report

    html = build_report(copy).read_text()
    assert 'id="reproduction"' in html and "The published findings at this cohort" in html


def test_a_smoothness_wider_than_the_field_of_view_is_a_warning():
    from ferritin.cohort.templates import load_template
    from ferritin.engine.group import _implausible_smoothness

    grid = load_template(VS).grid
    assert _implausible_smoothness("c", [8.0, 9.0, 10.0], grid) == []
    (warning,) = _implausible_smoothness("c", [3e6, 9.0, 10.0], grid)
    assert warning.startswith("c: the smoothness") and "3e+06" in warning and "not meaningful" in warning
    assert _implausible_smoothness("c", [float("nan"), 9.0, 10.0], grid)
