"""Did a run find the effects planted in a simulated cohort?

A simulated cohort records its planted effects (``derivatives/ground-truth/
simulation.json``: name, atlas region and peak in MNI mm of each).  For every
planted effect and every contrast of the study, :func:`planted_effect_recovery`
looks for a corrected result within ``within_mm`` of the planted peak — a
small-volume peak with p(FWE-SVC) < alpha, or a whole-brain peak or cluster
with p(FWE) < alpha (a cluster by its permutation p where the run has one) —
and reports the best one, and, for the ROIs the run built, the ROI-level
group difference (the study's post-hoc GM ANCOVA).  The same function scores
a null cohort: there every corrected result is a false positive.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from ferritin.stats.analysis import cluster_fwe_p

__all__ = ["planted_effects", "planted_effect_recovery", "unplanted_results", "roi_recovery",
           "score_planted_effects"]

COLUMNS = ["effect", "region", "planted_x", "planted_y", "planted_z", "contrast", "planted", "found", "source",
           "x", "y", "z", "distance_mm", "T", "p_fwe"]


def planted_effects(bids_root: str | Path) -> list[dict]:
    """The planted effects of a simulated BIDS dataset (empty when it has none or is not simulated)."""
    path = Path(bids_root) / "derivatives" / "ground-truth" / "simulation.json"
    if not path.exists():
        return []
    return list(json.loads(path.read_text()).get("effects", []))


def _as_dict(effect) -> dict:
    if isinstance(effect, dict):
        return effect
    return {"name": effect.name, "region": effect.region, "peak_mni": tuple(effect.peak_mni),
            "chi_ppm": effect.chi_ppm, "gm_fraction": effect.gm_fraction}


def _planted_in(effect: dict, map_name: str | None) -> bool:
    """Whether the effect changes the map a contrast tests (True when either is not known)."""
    amplitude = "chi_ppm" if map_name == "chi" else "gm_fraction" if str(map_name).startswith("gm") else None
    return amplitude is None or effect.get(amplitude) is None or float(effect[amplitude]) != 0.0


def _candidates(contrast, alpha: float) -> pd.DataFrame:
    """Every corrected-significant peak of one :class:`~ferritin.engine.group.ContrastSummary`, with where its
    correction came from."""
    rows = []
    for name, t in contrast.svc.items():
        if len(t) and "p_fwe" in t.columns:
            for i, r in t[t["p_fwe"] < alpha].iterrows():
                rows.append({"source": f"SVC {name}", "cluster": r.get("cluster", i), "x": r.x, "y": r.y, "z": r.z,
                             "T": r["T"], "p_fwe": r.p_fwe})
    table = contrast.table
    if table is not None and len(table):
        p = np.minimum(table["p_fwe"].to_numpy(float), cluster_fwe_p(table))
        for (i, r), pr in zip(table.iterrows(), p):
            if pr < alpha:
                rows.append({"source": "whole brain", "cluster": r.get("cluster", i), "x": r.x, "y": r.y, "z": r.z,
                             "T": r["T"], "p_fwe": pr})
    return pd.DataFrame(rows, columns=["source", "cluster", "x", "y", "z", "T", "p_fwe"])


def planted_effect_recovery(results, effects, within_mm: float = 10.0, alpha: float = 0.05) -> pd.DataFrame:
    """One row per (planted effect, contrast): the best corrected result near the planted peak.

    Parameters
    ----------
    results : :class:`~ferritin.engine.group.GroupResult`
        What :func:`engine.pipeline.run_group` returns (``contrasts`` with their
        whole-brain ``table`` and ``svc`` tables).
    effects : sequence of cohort.simulate.Effect or dicts with name, region, peak_mni
    within_mm : float
        A result counts for an effect when its peak lies this close to the planted peak.
    alpha : float
        Corrected significance level.

    Returns
    -------
    DataFrame with the planted peak, ``planted`` (False where the effect leaves the contrast's map
    unchanged: a χ-only effect in a GM contrast), ``found``, and for the lowest-p result
    within reach its source, coordinates, distance, T and p(FWE); NaN where
    nothing significant is within reach.
    """
    if within_mm <= 0:
        raise ValueError(f"within_mm must be positive, got {within_mm}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    candidates = {name: _candidates(c, alpha) for name, c in results.contrasts.items()}
    maps = {name: c.map for name, c in results.contrasts.items()}
    rows = []
    for effect in map(_as_dict, effects):
        peak = np.asarray(effect["peak_mni"], dtype=float)
        for cname, cand in candidates.items():
            row = {"effect": effect["name"], "region": effect.get("region", ""), "planted_x": peak[0],
                   "planted_y": peak[1], "planted_z": peak[2], "contrast": cname,
                   "planted": _planted_in(effect, maps.get(cname)), "found": False,
                   "source": "", "x": np.nan, "y": np.nan, "z": np.nan, "distance_mm": np.nan,
                   "T": np.nan, "p_fwe": np.nan}
            if len(cand):
                d = np.linalg.norm(cand[["x", "y", "z"]].to_numpy(float) - peak, axis=1)
                near = cand.assign(distance_mm=d)[d <= within_mm]
                if len(near):
                    best = near.sort_values(["p_fwe", "distance_mm"]).iloc[0]
                    row.update(found=True, source=best.source, x=best.x, y=best.y, z=best.z,
                               distance_mm=float(best.distance_mm), T=float(best["T"]), p_fwe=float(best.p_fwe))
            rows.append(row)
    return pd.DataFrame(rows, columns=COLUMNS)


def unplanted_results(results, effects, within_mm: float = 10.0, alpha: float = 0.05) -> pd.DataFrame:
    """Every corrected result farther than ``within_mm`` from all planted peaks: the false positives.

    A result is a cluster of a contrast's whole-brain or small-volume table, judged by all its listed
    peaks: a cluster with any peak near a planted one is that effect's, even where its secondary maxima
    lie farther away.  On a null cohort (no effects) every corrected result is listed.  One row per
    cluster: the contrast, where its correction came from, its most significant peak, T, p(FWE) and the
    distance from its nearest peak to the nearest planted peak.
    """
    if within_mm <= 0:
        raise ValueError(f"within_mm must be positive, got {within_mm}")
    peaks = np.array([_as_dict(e)["peak_mni"] for e in effects], dtype=float).reshape(-1, 3)
    cols = ["contrast", "source", "x", "y", "z", "T", "p_fwe", "nearest_planted_mm"]
    rows = []
    for cname, contrast in results.contrasts.items():
        cand = _candidates(contrast, alpha)
        xyz = cand[["x", "y", "z"]].to_numpy(float)
        nearest = (np.linalg.norm(xyz[:, None, :] - peaks[None], axis=2).min(axis=1) if len(peaks)
                   else np.full(len(cand), np.inf))
        for _, peaks_of in cand.assign(nearest_planted_mm=nearest).groupby(["source", "cluster"], sort=False):
            if peaks_of["nearest_planted_mm"].min() > within_mm:
                best = peaks_of.sort_values("p_fwe").iloc[0]
                rows.append({**best[cols[1:-1]].to_dict(), "contrast": cname,
                             "nearest_planted_mm": float(peaks_of["nearest_planted_mm"].min())})
    return pd.DataFrame(rows, columns=cols)


def roi_recovery(results, effects, within_mm: float = 10.0) -> pd.DataFrame:
    """The post-hoc ROI group differences (ANCOVA) of the ROIs built near each planted effect.

    The study tested GM in the clusters of increased χ; this pairs every ROI
    whose peak lies within ``within_mm`` of a planted peak with that effect and
    gives, per map, the difference of the adjusted means (first group of the
    spec minus the second, e.g. ALS − NC) and the ANCOVA p of the group term.
    """
    findings = results.findings or {}
    rois, groups = findings.get("rois"), findings.get("roi_groups")
    cols = ["effect", "roi", "distance_mm", "map", "difference", "p"]
    if rois is None or groups is None or not len(rois) or not len(groups):
        return pd.DataFrame(columns=cols)
    rows = []
    for effect in map(_as_dict, effects):
        peak = np.asarray(effect["peak_mni"], dtype=float)
        for _, roi in rois.iterrows():
            d = float(np.linalg.norm(np.array([roi.x, roi.y, roi.z], float) - peak))
            if not d <= within_mm:
                continue
            for _, g in groups[groups["roi"] == roi.roi].iterrows():
                first, second = [g[c] for c in groups.columns if c.endswith(" adj mean")][:2]
                rows.append({"effect": effect["name"], "roi": roi.roi, "distance_mm": d, "map": g["map"],
                             "difference": first - second, "p": g["p"]})
    return pd.DataFrame(rows, columns=cols)


def score_planted_effects(results, effects, out_dir: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Score a group result against planted effects and write the two tables beside the study's.

    A step of its own, not of a study: ``ferritin demo`` calls it, and so may a
    user on any simulated cohort (``effects`` from :func:`planted_effects`).
    Writes ``tables/planted_effects.csv`` (:func:`planted_effect_recovery`) and
    ``tables/planted_effects_roi.csv`` (:func:`roi_recovery`) into ``out_dir``,
    which the report then shows.
    """
    from .tables import write_csv

    effects = list(effects)
    if not effects:
        raise ValueError("no planted effects to score against (is this a simulated cohort?)")
    found = planted_effect_recovery(results, effects)
    rois = roi_recovery(results, effects)
    tables = Path(out_dir) / "tables"
    tables.mkdir(parents=True, exist_ok=True)
    write_csv(found, tables / "planted_effects.csv", index=False)
    write_csv(rois, tables / "planted_effects_roi.csv", index=False)
    return found, rois
