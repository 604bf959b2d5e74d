"""The tables of a paper, from tidy frames: Table 1, ROI group comparisons,
correlations with clinical scores, normality.

Inputs are a participants table (index: subject) and an ROI table in tidy form
(one row per subject × ROI × map, as ``roi_values.csv``).  Every number comes
from :mod:`stats.clinical`, i.e. from scipy/statsmodels; nothing here
computes a test of its own.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from . import clinical

__all__ = ["table_one", "roi_wide", "roi_group_table", "correlation_table", "normality_table"]

_SIGN = {"positive": "greater", "negative": "less"}


def table_one(participants: pd.DataFrame, groups, group: str = "group", sex: str = "sex",
              continuous=("age", "tiv", "alsfrs_r", "umn", "dd", "dpr")) -> pd.DataFrame:
    """Demographics by group with the test the study used for each row.

    Continuous rows: n, mean and s.d. per group and a two-sample t test when
    both groups have values (clinical scores exist only for patients and get
    no test).  The sex row: counts of each sex per group and Pearson's
    chi-squared test.

    Returns
    -------
    DataFrame with columns ``variable, test, statistic, df, p`` and per group
    ``<g> n, <g> mean, <g> sd`` (for sex, ``<g> <level>`` counts).
    """
    groups = list(groups)
    if group not in participants.columns:
        raise ValueError(f"participants table has no {group!r} column")
    t = participants[participants[group].isin(groups)]
    rows = []
    for col in continuous:
        if col not in t.columns:
            continue
        values = pd.to_numeric(t[col], errors="coerce")
        row = {"variable": col}
        have = []
        for g in groups:
            v = values[t[group] == g].dropna()
            row[f"{g} n"] = int(v.size)
            row[f"{g} mean"] = float(v.mean()) if v.size else np.nan
            row[f"{g} sd"] = float(v.std(ddof=1)) if v.size > 1 else np.nan
            have.append(v.size > 1)
        if len(groups) == 2 and all(have):
            res = clinical.compare_groups(t.assign(**{col: values}), col, group=group, groups=groups)
            row.update(test="t", statistic=res["t"], df=float(res["df"]), p=res["p"])
        else:
            row.update(test="", statistic=np.nan, df=np.nan, p=np.nan)
        rows.append(row)
    if sex in t.columns and t[sex].notna().any():
        res = clinical.sex_by_group(t.dropna(subset=[sex]), group=group, sex=sex)
        row = {"variable": sex, "test": "chi2", "statistic": res["chi2"], "df": float(res["dof"]), "p": res["p"]}
        ct = res["table"]
        for g in groups:
            row[f"{g} n"] = int(ct.loc[g].sum()) if g in ct.index else 0
            for level in ct.columns:
                row[f"{g} {level}"] = int(ct.loc[g, level]) if g in ct.index else 0
        rows.append(row)
    out = pd.DataFrame(rows)
    lead = ["variable", "test", "statistic", "df", "p"]
    return out[lead + [c for c in out.columns if c not in lead]]


def roi_wide(roi_long: pd.DataFrame) -> pd.DataFrame:
    """Tidy ROI values (subject, roi, map, value) as one column per ``map:roi``."""
    need = {"subject", "roi", "map", "value"}
    if not need <= set(roi_long.columns):
        raise ValueError(f"ROI table needs columns {sorted(need)}, has {list(roi_long.columns)}")
    wide = roi_long.pivot_table(index="subject", columns=["map", "roi"], values="value", aggfunc="first",
                                dropna=False)
    wide.columns = [f"{m}:{r}" for m, r in wide.columns]
    return wide


def _frame(roi_long, participants):
    wide = roi_wide(roi_long)
    return participants.join(wide, how="inner")


def roi_group_table(roi_long: pd.DataFrame, participants: pd.DataFrame, groups, covariates=("tiv",),
                    group: str = "group") -> pd.DataFrame:
    """ANCOVA of every ROI value by group with covariates (the study: GM with TIV).

    One row per (roi, map): F and p of the group term, the group t, and the
    adjusted mean and s.e. per group (at the covariate means).
    """
    groups = list(groups)
    d = _frame(roi_long, participants)
    rows = []
    for (roi, m), _ in roi_long.groupby(["roi", "map"], sort=False):
        col = f"{m}:{roi}"
        res = clinical.ancova(d, col, group=group, covariates=tuple(covariates), groups=groups)
        row = {"roi": roi, "map": m, "covariates": ", ".join(covariates), "F": res["F"], "t": res["t"],
               "df_resid": res["df_resid"], "p": res["p"]}
        for g in groups:
            row[f"{g} adj mean"] = res["adjusted_means"][g]
            row[f"{g} adj se"] = res["adjusted_se"][g]
        rows.append(row)
    return pd.DataFrame(rows)


def correlation_table(roi_long: pd.DataFrame, participants: pd.DataFrame, groups, patient_group: str,
                      scores=("alsfrs_r", "umn", "dd", "dpr"), expected_sign: dict | None = None,
                      chi_vs_gm: str = "negative", partial_covariates=("age",), group: str = "group",
                      chi_map: str = "chi", gm_map: str = "gm_mod_s") -> pd.DataFrame:
    """The study's correlation family, with one-tailed p in the hypothesised direction.

    Rows:
    - χ vs GM in each ROI, within each group (``chi_vs_gm`` sign);
    - in the patient group, each ROI map vs each clinical score, with the sign
      from ``expected_sign[map][score]`` ("positive"/"negative"; two-tailed
      only when absent).
    Each row has Pearson R and p (one- and two-tailed), the partial R
    controlling ``partial_covariates`` and its p, and Benjamini–Hochberg q over
    the whole family (two-tailed Pearson p).
    """
    d = _frame(roi_long, participants)
    expected_sign = expected_sign or {}
    rois = list(dict.fromkeys(roi_long["roi"]))
    maps = list(dict.fromkeys(roi_long["map"]))
    jobs = []
    if chi_map in maps and gm_map in maps:
        for roi in rois:
            for g in groups:
                jobs.append((g, f"{chi_map}:{roi}", f"{gm_map}:{roi}", chi_vs_gm))
    for roi in rois:
        for m in maps:
            for s in scores:
                if s in d.columns:
                    jobs.append((patient_group, f"{m}:{roi}", s, expected_sign.get(m, {}).get(s)))
    rows = []
    for g, x, y, sign in jobs:
        sub = d[d[group] == g]
        xv = pd.to_numeric(sub[x], errors="coerce")
        yv = pd.to_numeric(sub[y], errors="coerce")
        alternative = _SIGN.get(sign or "", "greater")
        row = {"group": g, "x": x, "y": y, "expected": sign or "", "n": int((xv.notna() & yv.notna()).sum())}
        try:
            r = clinical.pearson(xv, yv, alternative=alternative)
        except ValueError:
            rows.append({**row, "r": np.nan, "p_two_tailed": np.nan, "p_one_tailed": np.nan})
            continue
        row.update(r=r.r, p_two_tailed=r.p_two_tailed, p_one_tailed=r.p_one_tailed if sign else np.nan)
        covs = [c for c in partial_covariates if c in sub.columns]
        if covs:
            try:
                pr = clinical.partial_correlation(xv, yv, sub[covs].apply(pd.to_numeric, errors="coerce"),
                                                  alternative=alternative)
                row.update(partial_r=pr.r, partial_p_two_tailed=pr.p_two_tailed,
                           partial_p_one_tailed=pr.p_one_tailed if sign else np.nan,
                           partial_for=", ".join(covs))
            except ValueError:
                pass
        rows.append(row)
    out = pd.DataFrame(rows)
    if len(out):
        out["q_fdr"] = clinical.fdr(out["p_two_tailed"].to_numpy())
    return out


def normality_table(roi_long: pd.DataFrame, participants: pd.DataFrame, groups, group: str = "group",
                    extra=("age", "alsfrs_r", "umn", "dd", "dpr")) -> pd.DataFrame:
    """Lilliefors test of every ROI value and clinical variable within each group."""
    d = _frame(roi_long, participants)
    cols = [f"{m}:{r}" for r, m in roi_long[["roi", "map"]].drop_duplicates().itertuples(index=False)]
    cols += [c for c in extra if c in d.columns]
    rows = []
    for g in groups:
        sub = d[d[group] == g]
        for c in cols:
            v = pd.to_numeric(sub[c], errors="coerce").dropna()
            if v.size < 5:
                continue
            res = clinical.lilliefors(v)
            rows.append({"group": g, "variable": c, "n": res["n"], "D": res["D"], "p": res["p"]})
    return pd.DataFrame(rows)
