"""Clinical statistics equal direct scipy/statsmodels computations."""

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from scipy import stats
from statsmodels.stats.multitest import multipletests

from ferritin.stats import clinical


@pytest.fixture(scope="module")
def table():
    rng = np.random.default_rng(3)
    n = 60
    df = pd.DataFrame({
        "group": ["ALS"] * 30 + ["NC"] * 30,
        "sex": rng.choice(["M", "F"], n),
        "age": rng.normal(51, 9, n),
        "tiv": rng.normal(1500, 120, n),
    }, index=[f"sub-{i:03d}" for i in range(n)])
    sev = rng.standard_normal(n)
    df["qsm"] = 0.02 * sev + 0.0005 * df["age"] + rng.normal(0, 0.01, n)
    df["gm"] = 0.5 - 0.03 * sev + 0.0001 * df["tiv"] + rng.normal(0, 0.02, n)
    df["umn"] = np.where(df.group == "ALS", np.round(8 + 3 * sev), np.nan)
    df.loc["sub-005", "qsm"] = np.nan
    return df


def test_pearson_one_and_two_tailed(table):
    c = clinical.pearson(table["qsm"], table["gm"], alternative="less")
    ok = table[["qsm", "gm"]].dropna()
    ref = stats.pearsonr(ok["qsm"], ok["gm"])
    assert c.r == pytest.approx(ref.statistic, rel=1e-12) and c.p_two_tailed == pytest.approx(ref.pvalue, rel=1e-10)
    assert c.r < 0 and c.p_one_tailed == pytest.approx(ref.pvalue / 2, rel=1e-8) and c.n == len(ok)


def test_partial_correlation_matches_regression(table):
    c = clinical.partial_correlation(table["qsm"], table["gm"], table[["age"]], alternative="less")
    ok = table[["qsm", "gm", "age"]].dropna()
    X = sm.add_constant(ok[["age"]])
    rx = sm.OLS(ok["qsm"], X).fit().resid
    ry = sm.OLS(ok["gm"], X).fit().resid
    assert c.r == pytest.approx(np.corrcoef(rx, ry)[0, 1], rel=1e-10)
    # same t and p as the slope of gm on qsm given age
    fit = sm.OLS(ok["gm"], sm.add_constant(ok[["qsm", "age"]])).fit()
    assert c.p_two_tailed == pytest.approx(fit.pvalues["qsm"], rel=1e-8)
    assert c.df == len(ok) - 3


def test_sex_chi_squared_and_age_t(table):
    res = clinical.sex_by_group(table)
    ref = stats.chi2_contingency(pd.crosstab(table.group, table.sex).to_numpy(), correction=False)
    assert res["chi2"] == pytest.approx(ref[0]) and res["p"] == pytest.approx(ref[1])
    t = clinical.compare_groups(table, "age")
    ref = stats.ttest_ind(table.age[table.group == "ALS"], table.age[table.group == "NC"])
    assert t["t"] == pytest.approx(ref.statistic) and t["p"] == pytest.approx(ref.pvalue)


def test_lilliefors_matches_statsmodels(table):
    from statsmodels.stats.diagnostic import lilliefors

    res = clinical.lilliefors(table["gm"])
    ref = lilliefors(table["gm"].to_numpy(), dist="norm", pvalmethod="table")
    assert res["D"] == pytest.approx(ref[0]) and res["p"] == pytest.approx(ref[1])


def test_ancova_matches_ols(table):
    res = clinical.ancova(table, "gm", covariates=("tiv",), groups=["ALS", "NC"])
    X = np.column_stack([np.ones(len(table)), (table.group == "NC").astype(float), table.tiv])
    fit = sm.OLS(table.gm.to_numpy(), X).fit()
    assert res["t"] == pytest.approx(fit.tvalues[1], rel=1e-8)
    assert res["F"] == pytest.approx(fit.tvalues[1] ** 2, rel=1e-8)
    diff = res["adjusted_means"]["NC"] - res["adjusted_means"]["ALS"]
    assert diff == pytest.approx(fit.params[1], rel=1e-8)


def test_progression_rate_and_zero_duration():
    t = pd.DataFrame({"alsfrs_r": [40, 30], "dd": [10.0, 0.0]}, index=["sub-01", "sub-02"])
    with pytest.raises(ValueError, match="sub-02"):
        clinical.progression_rate(t)
    assert clinical.progression_rate(t.iloc[:1]).iloc[0] == pytest.approx(0.8)


def test_fdr_matches_statsmodels():
    p = np.array([0.01, 0.04, 0.03, 0.2, np.nan, 0.001])
    ok = np.isfinite(p)
    ref = multipletests(p[ok], method="fdr_bh")[1]
    np.testing.assert_allclose(clinical.fdr(p)[ok], ref)
    assert np.isnan(clinical.fdr(p)[4])


def test_missing_dpr_is_computed_and_zero_duration_is_named():
    import pandas as pd

    from ferritin.engine.findings import with_progression_rate

    p = pd.DataFrame({"group": ["ALS", "ALS", "ALS", "NC"], "alsfrs_r": [40, 36, 30, np.nan],
                      "dd": [8, 0, 12, np.nan], "dpr": [np.nan, np.nan, 1.5, np.nan]},
                     index=["sub-01", "sub-02", "sub-03", "sub-04"])
    out, notes = with_progression_rate(p)
    assert out.loc["sub-01", "dpr"] == pytest.approx((48 - 40) / 8)
    assert np.isnan(out.loc["sub-02", "dpr"]) and out.loc["sub-03", "dpr"] == 1.5  # given values are kept
    assert np.isnan(out.loc["sub-04", "dpr"])
    assert any(n.startswith("sub-02: DPR undefined") for n in notes)
