"""R2* from the multi-echo magnitude against a mono-exponential decay with Rician noise."""

import numpy as np
import pytest

from ferritin.engine.qsm.relaxometry import background_noise_sd, r2star_loglinear

TE = np.arange(1, 13) * 0.004  # 12 echoes, 4 ms apart (the reference study's GRE)


def _decay(r2s, snr, rng, shape=(20, 20, 20)):
    """Rician magnitudes of S0 exp(-R2* TE) with S0 = 1 and noise σ = 1 / snr (SNR of the first... of S0)."""
    sigma = 1.0 / snr
    s = np.exp(-np.outer(TE, np.full(np.prod(shape), r2s))).reshape((TE.size, *shape))
    noisy = np.abs(s + sigma * (rng.standard_normal(s.shape) + 1j * rng.standard_normal(s.shape)))
    return noisy, sigma


@pytest.mark.parametrize("r2s", [15.0, 30.0, 60.0])
def test_bias_below_2_percent_at_snr_40(r2s):
    rng = np.random.default_rng(0)
    mag, sigma = _decay(r2s, 40.0, rng)
    mask = np.ones(mag.shape[1:], bool)
    fit = r2star_loglinear(mag, TE, mask, noise_sd=sigma)
    assert abs(np.nanmedian(fit) / r2s - 1) < 0.02
    assert np.isfinite(fit).mean() > 0.99


def test_the_noise_floor_keeps_a_fast_decay_from_reading_slow():
    """At R2* 100/s the late echoes are noise: fitted they drag the slope towards 0; left out they do not."""
    rng = np.random.default_rng(1)
    mag, sigma = _decay(100.0, 40.0, rng)
    mask = np.ones(mag.shape[1:], bool)
    with_floor = np.nanmedian(r2star_loglinear(mag, TE, mask, noise_sd=sigma))
    without = np.nanmedian(r2star_loglinear(mag, TE, mask))
    assert abs(with_floor / 100.0 - 1) < abs(without / 100.0 - 1)
    assert abs(with_floor / 100.0 - 1) < 0.05


def test_noise_from_the_background():
    rng = np.random.default_rng(2)
    sigma = 3.0
    air = np.abs(sigma * (rng.standard_normal((40, 40, 40)) + 1j * rng.standard_normal((40, 40, 40))))
    head = np.zeros(air.shape, bool)
    head[10:30, 10:30, 10:30] = True
    assert background_noise_sd(air, head) == pytest.approx(sigma, rel=0.03)
    assert np.isnan(background_noise_sd(air[:3, :3, :3], head[:3, :3, :3]))


def test_outside_the_mask_and_too_few_echoes_is_nan():
    mag = np.ones((3, 4, 4, 4))
    mask = np.zeros((4, 4, 4), bool)
    mask[1, 1, 1] = True
    fit = r2star_loglinear(mag, TE[:3], mask, noise_sd=1.0)  # every echo at the floor: none usable
    assert np.isnan(fit).all()


@pytest.mark.parametrize("te, match", [([0.004], "two increasing"), ([0.008, 0.004], "two increasing")])
def test_refuses_echo_times_that_cannot_fit(te, match):
    with pytest.raises(ValueError, match=match):
        r2star_loglinear(np.ones((len(te), 2, 2, 2)), te, np.ones((2, 2, 2), bool))


def test_noise_around_a_head_it_finds_itself():
    rng = np.random.default_rng(3)
    sigma = 2.0
    grid = np.indices((48, 48, 48)) - 24
    head = (grid**2).sum(0) < 15**2
    signal = np.where(head, 100.0, 0.0)
    mag = np.abs(signal + sigma * (rng.standard_normal(head.shape) + 1j * rng.standard_normal(head.shape)))
    assert background_noise_sd(mag) == pytest.approx(sigma, rel=0.05)


def test_r2star_warns_of_echoes_that_cannot_see_a_decay():
    from ferritin.engine.qsm.relaxometry import r2star_warning

    assert r2star_warning([0.004, 0.008, 0.012, 0.016]) is None
    two_short = r2star_warning([0.0023, 0.0046])  # the Philips volunteer's echoes
    assert "2 echoes" in two_short and "2.3 ms apart" in two_short
    assert "at least 5 ms" in r2star_warning([0.002, 0.003, 0.004])
