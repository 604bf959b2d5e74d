"""Clinical statistics of the reference study, on tidy tables.

Pearson correlations (one- and two-tailed), partial correlations controlling
for covariates, chi-squared for sex by group, two-sample t for age,
Lilliefors normality, ANCOVA of an ROI value by group with covariates,
disease progression rate, and Benjamini–Hochberg FDR across a family.
Every function returns plain numbers that a direct scipy/statsmodels call
reproduces (tests check that).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

__all__ = [
    "Correlation",
    "pearson",
    "partial_correlation",
    "sex_by_group",
    "compare_groups",
    "lilliefors",
    "ancova",
    "progression_rate",
    "fdr",
]


@dataclass(frozen=True)
class Correlation:
    r: float
    p_two_tailed: float
    p_one_tailed: float  # in the direction of ``alternative`` given to the function
    n: int
    df: int


def _paired(x, y, covariates=None):
    frame = pd.DataFrame({"x": np.asarray(x, dtype=float), "y": np.asarray(y, dtype=float)})
    if covariates is not None:
        cov = pd.DataFrame(np.asarray(covariates, dtype=float).reshape(len(frame), -1))
        frame = pd.concat([frame, cov.add_prefix("c")], axis=1)
    frame = frame.dropna()
    if len(frame) < 3:
        raise ValueError(f"need at least 3 complete pairs, got {len(frame)}")
    return frame


def pearson(x, y, alternative: str = "greater") -> Correlation:
    """Pearson R with two-tailed and one-tailed p (``alternative``: greater | less).

    Pairs with a missing value are dropped.
    """
    if alternative not in ("greater", "less"):
        raise ValueError("alternative must be 'greater' or 'less'")
    f = _paired(x, y)
    two = stats.pearsonr(f["x"], f["y"])
    one = stats.pearsonr(f["x"], f["y"], alternative=alternative)
    return Correlation(float(two.statistic), float(two.pvalue), float(one.pvalue), len(f), len(f) - 2)


def partial_correlation(x, y, covariates, alternative: str = "greater") -> Correlation:
    """Partial correlation of x and y controlling for covariates (residual method, df = n - 2 - k)."""
    f = _paired(x, y, covariates)
    C = np.column_stack([np.ones(len(f)), f.filter(like="c").to_numpy()])
    rx = f["x"].to_numpy() - C @ np.linalg.lstsq(C, f["x"].to_numpy(), rcond=None)[0]
    ry = f["y"].to_numpy() - C @ np.linalg.lstsq(C, f["y"].to_numpy(), rcond=None)[0]
    r = float(np.corrcoef(rx, ry)[0, 1])
    df = len(f) - 2 - (C.shape[1] - 1)
    t = r * np.sqrt(df / max(1 - r * r, 1e-300))
    p_two = float(2 * stats.t.sf(abs(t), df))
    p_one = float(stats.t.sf(t, df) if alternative == "greater" else stats.t.cdf(t, df))
    return Correlation(r, p_two, p_one, len(f), df)


def sex_by_group(table: pd.DataFrame, group: str = "group", sex: str = "sex") -> dict:
    """Chi-squared test of sex by group (no continuity correction, as SPSS's Pearson chi-square)."""
    ct = pd.crosstab(table[group], table[sex])
    chi2, p, dof, _ = stats.chi2_contingency(ct.to_numpy(), correction=False)
    return {"table": ct, "chi2": float(chi2), "p": float(p), "dof": int(dof)}


def compare_groups(table: pd.DataFrame, value: str, group: str = "group", groups=None) -> dict:
    """Two-sample t test (equal variances, as the study) of ``value`` between two groups."""
    groups = list(groups) if groups is not None else sorted(table[group].dropna().unique())
    if len(groups) != 2:
        raise ValueError(f"need exactly two groups, got {groups}")
    a = table.loc[table[group] == groups[0], value].dropna().to_numpy(float)
    b = table.loc[table[group] == groups[1], value].dropna().to_numpy(float)
    res = stats.ttest_ind(a, b)
    return {"groups": groups, "mean": [float(a.mean()), float(b.mean())], "sd": [float(a.std(ddof=1)), float(b.std(ddof=1))],
            "t": float(res.statistic), "p": float(res.pvalue), "df": len(a) + len(b) - 2}


def lilliefors(x) -> dict:
    """Lilliefors (Kolmogorov–Smirnov with estimated mean and s.d.) normality test."""
    from statsmodels.stats.diagnostic import lilliefors as _lf

    x = np.asarray(x, dtype=float)
    x = x[np.isfinite(x)]
    stat, p = _lf(x, dist="norm", pvalmethod="table")
    return {"D": float(stat), "p": float(p), "n": int(x.size)}


def ancova(table: pd.DataFrame, value: str, group: str = "group", covariates=("tiv",), groups=None) -> dict:
    """Group difference of ``value`` adjusted for covariates (OLS, type-II F and the group t).

    Returns the adjusted group means (at the covariate means) and their standard
    errors, for the bar plots of the report.
    """
    import statsmodels.formula.api as smf
    from statsmodels.stats.anova import anova_lm

    cols = [value, group, *covariates]
    d = table[cols].dropna().copy()
    groups = list(groups) if groups is not None else sorted(d[group].unique())
    d[group] = pd.Categorical(d[group], categories=groups)
    formula = f"Q('{value}') ~ C({group})" + "".join(f" + Q('{c}')" for c in covariates)
    model = smf.ols(formula, data=d).fit()
    aov = anova_lm(model, typ=2)
    term = f"C({group})"
    means, ses = [], []
    centre = {c: d[c].mean() for c in covariates}
    for g in groups:
        row = pd.DataFrame({group: pd.Categorical([g], categories=groups), **{c: [v] for c, v in centre.items()}})
        pred = model.get_prediction(row).summary_frame()
        means.append(float(pred["mean"].iloc[0]))
        ses.append(float(pred["mean_se"].iloc[0]))
    coef = [k for k in model.params.index if k.startswith(term)][0]
    return {"F": float(aov.loc[term, "F"]), "p": float(aov.loc[term, "PR(>F)"]), "t": float(model.tvalues[coef]),
            "df_resid": float(model.df_resid), "adjusted_means": dict(zip(groups, means)),
            "adjusted_se": dict(zip(groups, ses))}


def progression_rate(table: pd.DataFrame, alsfrs: str = "alsfrs_r", dd: str = "dd", max_score: float = 48.0) -> pd.Series:
    """DPR = (48 − ALSFRS-R) / DD for every subject with both scores.

    Raises
    ------
    ValueError
        Naming the subjects whose disease duration is zero (DPR undefined).
    """
    zero = table[dd] == 0
    if zero.any():
        raise ValueError(f"disease duration is 0 for {', '.join(map(str, table.index[zero]))}: DPR undefined")
    return (max_score - table[alsfrs]) / table[dd]


def fdr(pvalues) -> np.ndarray:
    """Benjamini–Hochberg adjusted p-values (NaN kept)."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = np.isfinite(p)
    q = p[ok]
    if q.size:
        order = np.argsort(q)
        ranked = q[order] * q.size / np.arange(1, q.size + 1)
        adj = np.minimum.accumulate(ranked[::-1])[::-1]
        res = np.empty_like(q)
        res[order] = np.minimum(adj, 1.0)
        out[ok] = res
    return out
