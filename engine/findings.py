"""From group maps to findings: ROIs from the significant clusters, per-subject
ROI values, and the post-hoc clinical tables.

ROIs are, as in the reference study, the clusters of the contrasts named in
``spec.roi.from_contrasts`` that survive correction — a small-volume
correction (peak p(FWE-SVC) < alpha: the cluster inside that small volume) or
the whole brain (peak or cluster p(FWE) < alpha) — plus any atlas region or
sphere listed in ``spec.roi.regions``.  Their mean χ and mean modulated
GM per subject go to the store (``/roi``) and to ``tables/roi_values.csv``;
the clinical tables are computed from exactly that CSV content.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from ferritin.stats import findings
from ferritin.stats.analysis import cluster_fwe_p, svc_volume
from ferritin.stats.clusters import sphere_mask
from ferritin.stats.roi import cluster_roi, label_image, roi_means

from .spec import StudySpec

__all__ = ["define_rois", "extract_roi_values", "clinical_tables", "peak_voxel", "DEFAULT_ROI_MAPS"]

DEFAULT_ROI_MAPS = ("chi", "gm_mod_s")


def peak_voxel(grid, row) -> tuple[int, int, int]:
    """The grid voxel of a table row's peak (its x, y, z in mm)."""
    ijk = np.round(grid.world_to_voxel([row["x"], row["y"], row["z"]])[0]).astype(int)
    return tuple(int(v) for v in ijk)


def define_rois(contrast_results: dict, spec: dict, template) -> tuple[dict, pd.DataFrame]:
    """ROI masks on the template grid, and a table saying where each came from.

    Parameters
    ----------
    contrast_results : dict name -> stats.analysis.ContrastResult
    spec : the study spec (``roi``, ``svc``, ``inference``)
    template : cohort.templates.Template

    Returns
    -------
    masks : dict name -> bool array
    sources : DataFrame (roi, source, contrast, peak x/y/z, T, p, voxels)
    """
    alpha = spec.inference.svc_alpha
    grid = template.grid
    svc_by_name = {s.name: s for s in spec.svc}
    masks, rows = {}, []
    for cname in spec.roi.from_contrasts:
        if cname not in contrast_results:
            raise ValueError(f"roi.from_contrasts names {cname!r}, which is not a contrast of the spec")
        res = contrast_results[cname]
        for name, table in res.svc.items():
            if "p_fwe" not in table.columns or not len(table) or not table["p_fwe"].iloc[0] < alpha:
                continue
            s = svc_by_name[name]
            region = template.region(s.region) if s.region else None
            vol, _ = svc_volume(res.T, res.mask, grid.affine, region, s.radius_mm,
                                table.attrs.get("centre_mm", s.centre_mm))
            peak = table.iloc[0]
            m = cluster_roi(np.where(res.mask, res.T, np.nan), res.u, peak_voxel(grid, peak), within=vol)
            roi = f"{cname}_{name}"
            masks[roi] = m
            rows.append({"roi": roi, "source": f"SVC {name}", "contrast": cname, "x": peak.x, "y": peak.y,
                         "z": peak.z, "T": peak["T"], "p_fwe": peak.p_fwe, "voxels": int(m.sum())})
        table = res.table.assign(cluster_p=cluster_fwe_p(res.table))
        for cl, t in table.groupby("cluster", sort=True) if len(table) else []:
            first = t.iloc[0]
            if not (first.p_fwe < alpha or first.cluster_p < alpha):
                continue
            peak = peak_voxel(grid, first)
            if any(other[peak] for other in masks.values()):
                continue  # the same finding, already an ROI through its small volume
            m = cluster_roi(np.where(res.mask, res.T, np.nan), res.u, peak)
            roi = f"{cname}_cluster{int(cl)}"
            masks[roi] = m
            rows.append({"roi": roi, "source": "whole brain", "contrast": cname, "x": first.x, "y": first.y,
                         "z": first.z, "T": first["T"], "p_fwe": min(first.p_fwe, first.cluster_p),
                         "voxels": int(m.sum())})
    for r in spec.roi.regions:
        m = np.ones(grid.shape, dtype=bool)
        if r.region:
            m &= template.region(r.region)
        if r.centre_mm is not None:
            m &= sphere_mask(grid.shape, grid.affine, r.centre_mm, r.radius_mm)
        if not m.any():
            raise ValueError(f"roi.regions {r.name!r} has no voxel on the {grid.voxel_size} mm grid")
        masks[r.name] = m
        c = r.centre_mm or [np.nan] * 3
        rows.append({"roi": r.name, "source": "spec", "contrast": "", "x": c[0], "y": c[1], "z": c[2],
                     "T": np.nan, "p_fwe": np.nan, "voxels": int(m.sum())})
    cols = ["roi", "source", "contrast", "x", "y", "z", "T", "p_fwe", "voxels"]
    return masks, pd.DataFrame(rows, columns=cols)


def extract_roi_values(mni: xr.Dataset, masks: dict, maps=DEFAULT_ROI_MAPS) -> pd.DataFrame:
    """Tidy table (subject, roi, map, value) of ROI means from the stacked ``/mni`` node."""
    rows = []
    subjects = [str(s) for s in mni["subject"].values]
    names = list(masks)
    for m in maps:
        values = roi_means(mni[m].data, masks)
        for n, roi in enumerate(names):
            rows.append(pd.DataFrame({"subject": subjects, "roi": roi, "map": m, "value": values[:, n]}))
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=["subject", "roi", "map", "value"])


def roi_dataset(roi_long: pd.DataFrame, masks: dict, sources: pd.DataFrame, grid) -> xr.Dataset:
    """The ``/roi`` node: values (subject, roi) per map, each ROI's mask and the ROI label image.

    ``roi_mask`` (roi, x, y, z) is exact where ROIs overlap (an SVC peak's
    cluster inside a whole-brain cluster); ``roi_labels`` is one integer
    image for viewers, in which later ROIs win overlaps.
    """
    labels, names = label_image(masks)
    wide = findings.roi_wide(roi_long)
    rois = list(masks)
    subjects = list(dict.fromkeys(roi_long["subject"]))
    data = {m: (("subject", "roi"), wide.reindex(index=subjects, columns=[f"{m}:{r}" for r in rois]).to_numpy(float))
            for m in dict.fromkeys(roi_long["map"])}
    data["roi_mask"] = (("roi", "x", "y", "z"), np.stack([np.asarray(masks[r], dtype=bool) for r in rois]))
    data["roi_labels"] = (("x", "y", "z"), labels, {"flag_values": list(names), "flag_meanings": rois})
    return xr.Dataset(
        data,
        coords={"subject": np.array(subjects, dtype=object), "roi": np.array(rois, dtype=object),
                "source": ("roi", np.array(sources.set_index("roi").loc[rois, "source"].tolist(), dtype=object)),
                **{ax: (ax, v, {"units": "mm"}) for ax, v in grid.coords().items()}},
    )


def with_progression_rate(participants: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """DPR = (48 − ALSFRS-R) / DD filled in where it is missing, and notes on subjects it cannot be given for.

    A disease duration of 0 makes DPR undefined: that subject's DPR stays
    missing and a note names the subject (the rest of the cohort goes on).
    """
    from ferritin.stats.clinical import progression_rate

    p = participants.copy()
    notes: list[str] = []
    if not {"alsfrs_r", "dd"} <= set(p.columns):
        return p, notes
    if "dpr" not in p.columns:
        p["dpr"] = np.nan
    dd = pd.to_numeric(p["dd"], errors="coerce")
    score = pd.to_numeric(p["alsfrs_r"], errors="coerce")
    need = p["dpr"].isna() & dd.notna() & score.notna()
    zero = need & (dd == 0)
    for sub in p.index[zero]:
        notes.append(f"{sub}: DPR undefined: disease duration (dd) is 0; left missing")
    ok = need & ~zero
    if ok.any():
        p.loc[ok, "dpr"] = progression_rate(pd.DataFrame({"alsfrs_r": score[ok], "dd": dd[ok]}))
        notes.append(f"DPR computed from ALSFRS-R and DD for {int(ok.sum())} subject(s): "
                     + ", ".join(map(str, p.index[ok])))
    return p, notes


def clinical_tables(roi_csv: str | Path | pd.DataFrame, participants: pd.DataFrame, spec: StudySpec) -> dict:
    """Table 1, ROI ANCOVA, correlations and normality from the ROI CSV and participants."""
    roi_long = pd.read_csv(roi_csv) if not isinstance(roi_csv, pd.DataFrame) else roi_csv
    groups = list(spec.groups)
    cl = spec.clinical
    participants, notes = with_progression_rate(participants)
    out = {"table1": findings.table_one(participants, groups), "notes": pd.DataFrame({"note": notes})}
    if len(roi_long):
        scores = [s for s in cl.scores if s in participants.columns]
        out["roi_groups"] = findings.roi_group_table(roi_long, participants, groups,
                                                     covariates=cl.roi_covariates)
        out["correlations"] = findings.correlation_table(
            roi_long, participants, groups, cl.patient_group, scores=scores,
            expected_sign=cl.expected_sign, chi_vs_gm=cl.chi_vs_gm,
            partial_covariates=cl.partial_covariates)
        out["normality"] = findings.normality_table(roi_long, participants, groups, extra=["age", *scores])
    return out
