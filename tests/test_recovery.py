"""Scoring a run against the effects planted in a simulated cohort."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from ferritin.cohort.simulate import REFERENCE_EFFECTS, power_matched_effects, severity_factor
from ferritin.engine.pipeline import ContrastSummary, GroupResult
from ferritin.engine.recovery import planted_effect_recovery, unplanted_results


def _results(svc_p=0.01, wb_peak_p=0.3, wb_cluster_p=0.2, at=(0.0, 0.0, 0.0)):
    svc = pd.DataFrame({"x": [at[0]], "y": [at[1]], "z": [at[2]], "T": [4.5], "p_fwe": [svc_p]})
    table = pd.DataFrame({"cluster": [1], "x": [30.0], "y": [0.0], "z": [0.0], "T": [4.0],
                          "p_fwe": [wb_peak_p], "cluster_p_fwe": [wb_cluster_p]})
    return GroupResult(["sub-01"], {}, {"c": ContrastSummary("", table, {"box": svc}, [8.0, 8.0, 8.0], 3.0, 20)})


def _effect(peak):
    return {"name": "e", "region": "Thalamus_L", "peak_mni": peak}


def test_a_result_counts_only_within_reach_and_below_alpha():
    near = planted_effect_recovery(_results(at=(6.0, 0.0, 8.0)), [_effect((0.0, 0.0, 0.0))]).iloc[0]
    assert near.found and near.source == "SVC box" and near.distance_mm == pytest.approx(10.0)
    far = planted_effect_recovery(_results(at=(6.0, 0.0, 8.1)), [_effect((0.0, 0.0, 0.0))]).iloc[0]
    assert not far.found and np.isnan(far.p_fwe)
    weak = planted_effect_recovery(_results(svc_p=0.05), [_effect((0.0, 0.0, 0.0))]).iloc[0]
    assert not weak.found


def test_a_whole_brain_cluster_counts_by_its_cluster_p():
    r = planted_effect_recovery(_results(svc_p=0.5, wb_cluster_p=0.01), [_effect((28.0, 0.0, 0.0))]).iloc[0]
    assert r.found and r.source == "whole brain" and r.p_fwe == pytest.approx(0.01)


def test_a_permutation_cluster_p_overrides_the_rft_one():
    """RFT cluster p runs above its nominal rate at p < 0.005 heights; where the run has
    permutation cluster p, that decides."""
    res = _results(svc_p=0.5, wb_cluster_p=0.01)
    res.contrasts["c"].table["cluster_p_fwe_perm"] = [0.3]
    r = planted_effect_recovery(res, [_effect((28.0, 0.0, 0.0))]).iloc[0]
    assert not r.found
    res.contrasts["c"].table["cluster_p_fwe_perm"] = [0.02]
    r = planted_effect_recovery(res, [_effect((28.0, 0.0, 0.0))]).iloc[0]
    assert r.found and r.p_fwe == pytest.approx(0.02)


def test_results_far_from_every_planted_peak_are_false_positives():
    res = _results(svc_p=0.01, wb_cluster_p=0.01, at=(0.0, 0.0, 0.0))  # SVC peak at 0, whole-brain at x = 30
    fp = unplanted_results(res, [_effect((0.0, 0.0, 5.0))])
    assert list(fp["source"]) == ["whole brain"] and fp["nearest_planted_mm"].iloc[0] == pytest.approx(np.hypot(30, 5))
    assert len(unplanted_results(res, [_effect((0.0, 0.0, 5.0)), _effect((25.0, 0.0, 0.0))])) == 0
    assert len(unplanted_results(res, [])) == 2  # a null cohort: every corrected result
    assert len(unplanted_results(_results(svc_p=0.2, wb_cluster_p=0.2), [])) == 0
    with pytest.raises(ValueError, match="within_mm"):
        unplanted_results(res, [], within_mm=-1)


def test_recovery_checks_its_arguments():
    with pytest.raises(ValueError, match="within_mm"):
        planted_effect_recovery(_results(), [], within_mm=0)
    with pytest.raises(ValueError, match="alpha"):
        planted_effect_recovery(_results(), [], alpha=1.5)


def _expected_t(effect, n_per_group: int, noise_sd: float, severities: np.ndarray) -> float:
    """Large-sample expected two-sample T of ``effect`` (patients vs controls) with measurement noise."""
    carried = effect.chi_ppm * severity_factor(effect, severities)
    pooled = np.sqrt((carried.var() + 2 * noise_sd**2) / 2)
    return float(carried.mean() / pooled * np.sqrt(n_per_group / 2))


def test_power_matching_keeps_the_expected_t():
    same = power_matched_effects(REFERENCE_EFFECTS, 34)
    assert [e.chi_ppm for e in same] == pytest.approx([e.chi_ppm for e in REFERENCE_EFFECTS])
    assert [e.severity_gain for e in same] == pytest.approx([e.severity_gain for e in REFERENCE_EFFECTS])
    ten = power_matched_effects(REFERENCE_EFFECTS, 10)
    k = np.sqrt(34 / 10)
    # patients' latent severities, drawn as the simulator draws them
    severities = np.random.default_rng(0).standard_normal(200_000)
    for a, b in zip(REFERENCE_EFFECTS, ten):
        assert b.gm_fraction == pytest.approx(a.gm_fraction * k, rel=0.02)  # k E[f](g) / E[f](g') times
        assert (b.region, b.peak_mni) == (a.region, a.peak_mni)
        # whether the patients' spread is mostly severity or mostly noise, T at 10 equals T at 34 (to the
        # sampling error of 200,000 severities)
        for noise in (0.1 * a.chi_ppm, 0.25 * a.chi_ppm, a.chi_ppm):
            t_ref = _expected_t(a, 34, noise, severities)
            assert _expected_t(b, 10, noise, severities) == pytest.approx(t_ref, rel=0.005)
        # scaling the effect alone would not: severity-dominated spread grows with it
        alone = replace(a, chi_ppm=a.chi_ppm * k)
        assert _expected_t(alone, 10, 0.1 * a.chi_ppm, severities) < 0.7 * _expected_t(a, 34, 0.1 * a.chi_ppm,
                                                                                        severities)
    with pytest.raises(ValueError, match="n_per_group"):
        power_matched_effects(REFERENCE_EFFECTS, 0)


def test_a_contrast_of_a_map_the_effect_leaves_alone_is_marked_not_planted():
    res = _results()
    res.contrasts["gm"] = replace(res.contrasts.pop("c"), map="gm_mod_s")
    res.contrasts["chi"] = replace(res.contrasts["gm"], map="chi")
    chi_only = {**_effect((0.0, 0.0, 0.0)), "chi_ppm": 0.02, "gm_fraction": 0.0}
    rows = planted_effect_recovery(res, [chi_only]).set_index("contrast")
    assert rows.loc["chi", "planted"] and not rows.loc["gm", "planted"]
    both = planted_effect_recovery(res, [_effect((0.0, 0.0, 0.0))])  # amplitudes unknown: counted as planted
    assert both["planted"].all()
