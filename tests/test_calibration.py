"""Calibration of the planted effects: the T model against a Monte-Carlo of the simulator's severity model,
and the rule amplitude = truth amplitude for the target ÷ retention."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from ferritin.cohort import calibration, published
from ferritin.cohort.calibration import amplitude_for_t, calibrated_effects, expected_t, region_class, severity_cv2
from ferritin.cohort.simulate import PRESETS, REFERENCE_EFFECTS, power_matched_effects, severity_factor


def test_cv2_of_the_severity_factor_matches_sampling():
    s = np.random.default_rng(0).standard_normal(2_000_000)
    for gain in (0.0, 0.3, 0.5, 1.2):
        f = severity_factor(REFERENCE_EFFECTS[0].__class__("e", "Thalamus_R", (0, 0, 0), severity_gain=gain), s)
        assert severity_cv2(gain) == pytest.approx(f.var() / f.mean() ** 2, rel=0.01, abs=1e-4)
    with pytest.raises(ValueError, match="severity_gain"):
        severity_cv2(-0.1)


@pytest.mark.parametrize("x_true", [0.2, 0.8, 1.0, 2.5])
def test_amplitude_for_t_inverts_the_expected_t(x_true):
    cv2 = severity_cv2(0.5)
    t = expected_t(1.7, x_true, 34, cv2)
    assert amplitude_for_t(1.7, t, 34, cv2) == pytest.approx(x_true, rel=1e-9)
    # without a severity spread the T is proportional to the amplitude
    assert expected_t(1.0, 2.0, 8, 0.0) == pytest.approx(2 * expected_t(1.0, 1.0, 8, 0.0))


def test_expected_t_agrees_with_simulated_groups():
    """Monte Carlo of two groups where patients carry a * max(0, 1 + g s) over a spread sigma: the median
    two-sample T is the expected one, and the inverted amplitude gives the target."""
    rng = np.random.default_rng(1)
    n, g, sigma, a0, reps = 34, 0.5, 1.0, 0.9, 4000
    e = a0 * float(np.mean(np.maximum(0, 1 + g * rng.standard_normal(1_000_000)))) / sigma

    def median_t(a):
        controls = rng.normal(0, sigma, (reps, n))
        s = rng.standard_normal((reps, n))
        patients = rng.normal(0, sigma, (reps, n)) + a * np.maximum(0, 1 + g * s)
        pooled = np.sqrt((controls.var(axis=1, ddof=1) + patients.var(axis=1, ddof=1)) / 2)
        return float(np.median((patients.mean(axis=1) - controls.mean(axis=1)) / (pooled * np.sqrt(2 / n))))

    assert median_t(a0) == pytest.approx(expected_t(e, 1.0, n, severity_cv2(g)), rel=0.04)
    for target in (2.5, 6.0):
        x = amplitude_for_t(e, target, n, severity_cv2(g))
        assert median_t(a0 * x) == pytest.approx(target, rel=0.04)


def test_unreachable_targets_are_refused():
    cv2 = severity_cv2(0.5)
    ceiling = np.sqrt(34 / cv2)
    assert expected_t(1e6, 1.0, 34, cv2) == pytest.approx(ceiling, rel=1e-6)
    with pytest.raises(ValueError, match="cannot be reached"):
        amplitude_for_t(2.0, ceiling * 1.01, 34, cv2)
    with pytest.raises(ValueError):
        amplitude_for_t(0.0, 3.0, 34, cv2)


def test_one_factor_fit_recovers_known_loadings():
    """Correlations made from known loadings give those loadings back; the scores share one."""
    C = published.Correlation
    true = {("chi", "a"): 0.8, ("gm_mod_s", "a"): 0.6, ("chi", "b"): 0.5, "clinical": 0.7}
    table = [C("1", ("chi", "a"), ("gm_mod_s", "a"), -0.8 * 0.6, 0.01, 1),
             C("2", ("chi", "a"), "umn", 0.8 * 0.7, 0.01, 2),
             C("3", ("gm_mod_s", "a"), "umn", -0.6 * 0.7, 0.01, 2),
             C("4", ("chi", "b"), "alsfrs_r", -0.5 * 0.7, 0.01, 2)]
    got = calibration.severity_loadings(table, upper={})
    for k, v in true.items():
        for key in (("umn", "alsfrs_r") if k == "clinical" else (k,)):
            assert got[key] == pytest.approx(v, abs=1e-4)
    # a bound holds, and the others make up for it as well as they can
    capped = calibration.severity_loadings(table, upper={("gm_mod_s", "a"): 0.5})
    assert capped[("gm_mod_s", "a")] == pytest.approx(0.5, abs=1e-6)
    with pytest.raises(ValueError, match="not be 0"):
        calibration.severity_loadings([C("0", ("chi", "a"), "umn", 0.0, 1.0, 2)], upper={})


def test_published_loadings_fit_the_table_within_reach():
    loadings = calibration.severity_loadings()
    reach = calibration.reachable_loadings()
    for c in published.CORRELATIONS:
        x = loadings[tuple(c.x)]
        y = loadings[c.y] if isinstance(c.y, str) else loadings[tuple(c.y)]
        assert abs(x * y - abs(c.R)) < 0.11, c.name  # the one-factor model is close to the table
    assert all(loadings[k] <= v + 1e-9 for k, v in reach.items())
    assert loadings["umn"] == loadings["alsfrs_r"]


@pytest.mark.parametrize("loading, t", [(0.5, 4.78), (0.45, 2.42), (0.3, 6.38)])
def test_gain_for_loading_agrees_with_simulated_patients(loading, t):
    """Monte Carlo of the severity model: at the gain (and the amplitude its T needs) the patients' values
    correlate ``loading`` with the severity and the groups differ by ``t``."""
    n = 34
    g = calibration.gain_for_loading(loading, t, n)
    mean, cv2 = calibration.severity_moments(g)
    e = calibration.amplitude_for_t(1.0, t, n, cv2)  # u · E[f] for sigma = 1
    a = e / mean
    rng = np.random.default_rng(2)
    s = rng.standard_normal((3000, n))
    patients = a * np.maximum(0, 1 + g * s) + rng.standard_normal((3000, n))
    controls = rng.standard_normal((3000, n))
    sc, pc = s - s.mean(1, keepdims=True), patients - patients.mean(1, keepdims=True)
    r = (sc * pc).sum(1) / np.sqrt((sc**2).sum(1) * (pc**2).sum(1))
    pooled = np.sqrt((patients.var(1, ddof=1) + controls.var(1, ddof=1)) / 2)
    tt = (patients.mean(1) - controls.mean(1)) / (pooled * np.sqrt(2 / n))
    assert np.mean(r) == pytest.approx(loading, abs=0.02)
    assert np.median(tt) == pytest.approx(t, rel=0.04)
    with pytest.raises(ValueError, match="at most"):
        calibration.gain_for_loading(0.95, 2.42, n)


def test_simulated_clinical_scores_follow_their_loading():
    from ferritin.cohort.simulate import CALIBRATED_CLINICAL_NOISE, SimulationSpec, sample_participants

    spec = SimulationSpec(n_per_group={"ALS": 4000, "NC": 1})
    p = sample_participants(spec)
    p = p[p["group"] == "ALS"]
    loadings = calibration.severity_loadings()
    for score in ("umn", "alsfrs_r"):
        # rounding and the scale's ends take a little off
        assert abs(np.corrcoef(p[score], p["severity"])[0, 1]) == pytest.approx(loadings[score], abs=0.04)
    assert spec.clinical_noise == CALIBRATED_CLINICAL_NOISE
    with pytest.raises(ValueError, match="clinical_noise"):
        SimulationSpec(clinical_noise={"umn": 1.0})


def test_region_classes():
    assert region_class("Thalamus_R") == "deep grey"
    assert region_class("Putamen_L") == "deep grey"
    assert region_class("Precentral_L") == "cortex"
    assert region_class("Hippocampus_L") == "cortex"


def test_calibration_rule():
    """amplitude = (the truth's amplitude for the target) ÷ retention, whatever the severity spread."""
    effects = REFERENCE_EFFECTS
    e2n = {e.name: {"chi": 3.0, "gm": -1.0} for e in effects}
    targets = {e.name: {"chi": 5.0, "gm": -2.5} for e in effects}
    full = calibrated_effects(effects, effect_to_noise=e2n, retention={k: 1.0 for k in calibration.RETENTION},
                              targets=targets, loadings={})
    half = calibrated_effects(effects, effect_to_noise=e2n, retention={k: 0.5 for k in calibration.RETENTION},
                              targets=targets, loadings={})
    for ref, a, b in zip(effects, full, half):
        cv2 = severity_cv2(ref.severity_gain)
        assert a.chi_ppm == pytest.approx(ref.chi_ppm * amplitude_for_t(3.0, 5.0, 34, cv2))
        assert b.chi_ppm == pytest.approx(2 * a.chi_ppm)
        assert b.gm_fraction == pytest.approx(2 * a.gm_fraction) and b.gm_fraction < 0
        assert a.severity_gain == ref.severity_gain and a.gain("gm") == ref.gain("gm")
    # a gain from a loading: the truth's amplitude at that gain, so the same T is expected
    ref = effects[0]
    gained = calibrated_effects(effects, effect_to_noise=e2n, retention={k: 1.0 for k in calibration.RETENTION},
                                targets=targets, loadings={ref.name: {"chi": 0.6}})[0]
    assert gained.severity_gain == pytest.approx(calibration.gain_for_loading(0.6, 5.0, 34))
    assert gained.gain("gm") == ref.severity_gain
    mean_ratio = calibration.severity_moments(gained.severity_gain)[0] / calibration.severity_moments(0.5)[0]
    assert expected_t(3.0 * mean_ratio, gained.chi_ppm / ref.chi_ppm, 34,
                      severity_cv2(gained.severity_gain)) == pytest.approx(5.0)
    # a GM loss beyond the largest allowed is planted at it
    tiny = calibrated_effects(effects, effect_to_noise=e2n, targets=targets, loadings={},
                              retention={**{k: 1.0 for k in calibration.RETENTION}, ("gm", "deep grey"): 0.01})
    assert [e.gm_fraction for e in tiny if e.region.startswith("Thalamus")] == [-0.5, -0.5]
    with pytest.raises(ValueError, match="cannot be reached"):
        calibrated_effects(effects, effect_to_noise=e2n, targets={e: {"chi": 13.0, "gm": -1} for e in targets},
                           loadings={})
    with pytest.raises(ValueError, match="positive"):
        calibrated_effects(effects, effect_to_noise=e2n, targets=targets, loadings={},
                           retention={**{k: 1.0 for k in calibration.RETENTION}, ("gm", "cortex"): -0.1})
    with pytest.raises(ValueError, match="no calibration"):
        calibrated_effects(effects, effect_to_noise={}, targets=targets)


def test_presets_use_the_calibrated_reference():
    cal = calibrated_effects(REFERENCE_EFFECTS)
    assert PRESETS["reference-study"].effects == cal
    assert PRESETS["demo"].effects == power_matched_effects(cal, 10)
    targets = calibration.published_targets()
    assert targets["thalamus_R"] == {"chi": 6.38, "gm": -4.10}
    assert {p.name for p in published.CHI_PEAKS if p.significant} == {e.name for e in REFERENCE_EFFECTS}


def test_effects_from_a_file_plant_where_they_say(tmp_path):
    from ferritin.cohort.simulate import effect_maps, read_effects
    from ferritin.cohort.templates import load_template

    f = tmp_path / "effects.yaml"
    f.write_text("- name: putamen_R\n  region: Putamen_R\n  peak_mni: [26, 4, 2]\n  chi_ppm: 0.03\n"
                 "- {name: caudate_L, region: Caudate_L, peak_mni: [-12, 12, 10], gm_fraction: -0.05}\n")
    effects = read_effects(f)
    assert [e.name for e in effects] == ["putamen_R", "caudate_L"]
    assert effects[0].chi_ppm == 0.03 and effects[1].gm_fraction == -0.05 and effects[1].peak_mni == (-12.0, 12.0, 10.0)
    tpl = load_template(3.0)
    w = effect_maps(tpl, effects)["putamen_R"]
    peak = tuple(np.round(tpl.grid.world_to_voxel([[26.0, 4.0, 2.0]])[0]).astype(int))
    assert w[peak] > 0.5 and (w[tpl.region("Putamen_L")] == 0).all()


@pytest.mark.parametrize("text, message", [
    ("- {name: a, region: Putamen_R, peak_mni: [1, 2, 3], chi: 0.1}", "unknown key"),
    ("- {name: a, region: Putamen, peak_mni: [1, 2, 3]}", "not an AAL region"),
    ("- {name: a, region: Putamen_R, peak_mni: [1, 2]}", "three numbers"),
    ("- {name: a, region: Putamen_R}", "missing"),
    ("- {name: a, region: Putamen_R, peak_mni: [1, 2, 3], chi_ppm: lots}", "chi_ppm must be a number"),
    ("- {name: a, region: Putamen_R, peak_mni: [1, 2, 3], radius_mm: 0}", "radius_mm"),
    ("- {name: a, region: Putamen_R, peak_mni: [1, 2, 3]}\n- {name: a, region: Putamen_L, peak_mni: [1, 2, 3]}",
     "unique"),
    ("[]", "non-empty list"),
    ("- {name: a, region: Putamen_R, peak_mni: [1, 2, 3], gm_severity_gain: -1}", "severity gains"),
])
def test_bad_effects_files_are_refused_by_name(tmp_path, text, message, capsys):
    from ferritin.cohort.simulate import read_effects
    from ferritin.engine.cli import main

    f = tmp_path / "effects.yaml"
    f.write_text(text)
    with pytest.raises(ValueError, match=message):
        read_effects(f)
    assert main(["simulate", str(tmp_path / "bids"), "--effects", str(f)]) == 2
    err = capsys.readouterr().err
    assert message in err and "effects.yaml" in err and "Traceback" not in err


@pytest.mark.parametrize("gain", [0.2, 0.68, 2.0])
def test_power_matching_keeps_the_model_t_whatever_the_effect_to_noise(gain):
    """Large gains (many patients carry none of the effect) need the exact rule, not gain / k."""
    k = np.sqrt(34 / 10)
    scale, new_gain = calibration.power_matched_part(gain, k)
    for e in (0.3, 1.0, 5.0):
        t34 = calibration.expected_t(e, 1.0, 34, calibration.severity_cv2(gain))
        e10 = e * calibration.severity_moments(new_gain)[0] / calibration.severity_moments(gain)[0]
        t10 = calibration.expected_t(e10, scale, 10, calibration.severity_cv2(new_gain))
        assert t10 == pytest.approx(t34, rel=1e-6)
    naive = calibration.expected_t(5.0 * calibration.severity_moments(gain / k)[0]
                                   / calibration.severity_moments(gain)[0], k, 10,
                                   calibration.severity_cv2(gain / k))
    if gain >= 2.0:  # the old rule (amplitude × k, gain ÷ k) falls short where the cut at zero matters
        assert naive < 0.9 * calibration.expected_t(5.0, 1.0, 34, calibration.severity_cv2(gain))
    assert calibration.power_matched_part(gain, 1.0) == pytest.approx((1.0, gain))
    back = calibration.power_matched_part(new_gain, 1 / k)  # and back to the reference size
    assert back[1] == pytest.approx(gain, rel=1e-6) and back[0] * scale == pytest.approx(1.0, rel=1e-6)
    with pytest.raises(ValueError, match="k > 0"):
        calibration.power_matched_part(gain, 0.0)


def test_expected_ferritin_t_is_the_published_t_at_the_calibrated_size():
    cal = {e.name: e for e in calibrated_effects(REFERENCE_EFFECTS)}
    targets = calibration.published_targets()
    for name, e in cal.items():
        assert calibration.expected_ferritin_t(e, "chi", 34) == pytest.approx(targets[name]["chi"], rel=1e-6)
        if e.gm_fraction > -0.5:  # not at the simulator's largest loss
            assert calibration.expected_ferritin_t(e, "gm", 34) == pytest.approx(targets[name]["gm"], rel=1e-6)
    demo = {e.name: e for e in PRESETS["demo"].effects}
    for name, e in demo.items():
        assert calibration.expected_ferritin_t(e, "chi", 10) == pytest.approx(targets[name]["chi"], rel=1e-6)
    # the thalamic GM losses the demo would need exceed the simulator's largest: less than published
    assert -4.10 < calibration.expected_ferritin_t(demo["thalamus_R"], "gm", 10) < -2.0
    assert calibration.expected_ferritin_t(replace(cal["thalamus_R"], name="mine"), "chi", 34) is None
