"""Truncation ringing: found axis by axis, filtered only where found, images without it left bit for bit."""

from dataclasses import replace

import numpy as np
import pytest
import scipy.fft as sfft

from ferritin.engine.qsm.chain import QSMParams, reconstruct_qsm
from ferritin.engine.qsm.ringing import ringing_evidence, taper_kspace, taper_noise_gain, tukey_taper

FINE = 3  # the phantom's object is built this many times finer than the acquired grid


def _head(shape, seed=0):
    """A head on a grid FINE times finer: bright scalp shell, brain inside, air outside; a smooth phase."""
    fine = tuple(n * FINE for n in shape)
    centre = [(n - 1) / 2 for n in fine]
    r = np.sqrt(sum(((g - c) / (0.42 * n)) ** 2 for g, c, n in zip(np.indices(fine, dtype=float), centre, fine)))
    magnitude = np.where(r < 0.85, 0.6, 0.0) + np.where((r >= 0.85) & (r < 1.0), 1.0, 0.0)
    x = np.indices(fine, dtype=float)[0] / fine[0]
    return magnitude * np.exp(1j * (0.8 * x - 0.4))


def _acquired(fine: np.ndarray, truncated_axes, shape, sigma=0.004, seed=0):
    """The fine object on the acquired grid: by k-space cropping (a scanner's truncation, which rings)
    along ``truncated_axes``, by taking every FINE-th sample (no ringing) along the others."""
    z = fine
    for axis in range(3):
        n = shape[axis]
        if axis in truncated_axes:
            spectrum = sfft.fftshift(sfft.fft(z, axis=axis), axes=axis)
            start = (z.shape[axis] - n) // 2
            kept = np.take(spectrum, range(start, start + n), axis=axis)
            z = sfft.ifft(sfft.ifftshift(kept, axes=axis), axis=axis) / FINE
        else:
            z = np.take(z, range(FINE // 2, z.shape[axis], FINE), axis=axis)
    rng = np.random.default_rng(seed)
    z = z + sigma * (rng.standard_normal(z.shape) + 1j * rng.standard_normal(z.shape))
    return np.abs(z)[None].astype(np.float32), np.angle(z)[None].astype(np.float32)


SHAPE = (40, 36, 32)


@pytest.fixture(scope="module")
def fine_head():
    return _head(SHAPE)


@pytest.mark.parametrize("truncated", [(), (1,), (0, 2), (0, 1, 2)])
def test_evidence_names_exactly_the_truncated_axes(fine_head, truncated):
    mag, phase = _acquired(fine_head, truncated, SHAPE)
    evidence = ringing_evidence(mag, phase)
    assert evidence.axes == truncated, evidence.to_dict()


def test_evidence_reads_every_kth_line_of_a_large_image_alike(fine_head):
    """Reading a subset of lines (as on a 1 mm head) names the same axes."""
    mag, phase = _acquired(fine_head, (1,), SHAPE)
    assert ringing_evidence(mag, phase, max_voxels=SHAPE[0] * SHAPE[1] * SHAPE[2] // 5).axes == (1,)


def test_evidence_refuses_mismatched_images():
    with pytest.raises(ValueError, match="magnitude and phase"):
        ringing_evidence(np.ones((1, 8, 8, 8)), np.ones((2, 8, 8, 8)))
    with pytest.raises(ValueError, match="edge_share"):
        ringing_evidence(np.ones((1, 8, 8, 8)), np.ones((1, 8, 8, 8)), edge_share=1.5)


def test_taper_along_one_axis_filters_that_axis_only():
    rng = np.random.default_rng(1)
    mag = rng.random((2, 12, 10, 8)).astype(np.float32)
    phase = rng.uniform(-3, 3, mag.shape).astype(np.float32)
    box = (slice(2, 9), slice(1, 8), slice(0, 6))
    out_m, out_p = taper_kspace(mag, phase, 0.3, box=box, axes=(1,))
    z = mag * np.exp(1j * phase)
    window = tukey_taper(10, 0.3).reshape(1, 1, -1, 1)
    expected = sfft.ifft(sfft.fft(z, axis=2) * window, axis=2)[(slice(None), *box)]
    np.testing.assert_allclose(out_m * np.exp(1j * out_p), expected, atol=1e-5)
    assert taper_noise_gain((12, 10, 8), 0.3, ()) == 1.0
    assert taper_noise_gain((12, 10, 8), 0.3) < taper_noise_gain((12, 10, 8), 0.3, (1,)) < 1.0


def test_default_leaves_an_image_without_ringing_bit_for_bit(fine_head):
    """The default ("auto") computes exactly what ``ringing: none`` does when nothing rings."""
    mag, phase = _acquired(fine_head, (), SHAPE)
    mag, phase = np.repeat(mag, 3, axis=0), np.stack([phase, 2 * phase, 3 * phase])[:, 0]
    args = (mag, phase, [0.005, 0.010, 0.015], np.diag([2.0, 2.0, 2.0, 1.0]), 3.0)
    provenance = {}
    auto, auto_mask = reconstruct_qsm(*args, QSMParams(), provenance=provenance)
    none, none_mask = reconstruct_qsm(*args, replace(QSMParams(), ringing="none"))
    assert QSMParams().ringing == "auto"
    assert provenance["tapered_axes"] == []
    assert np.array_equal(auto, none) and np.array_equal(auto_mask, none_mask)


def test_default_tapers_the_ringing_axis_and_records_it(fine_head):
    mag, phase = _acquired(fine_head, (1,), SHAPE)
    mag, phase = np.repeat(mag, 3, axis=0), np.stack([phase, 2 * phase, 3 * phase])[:, 0]
    args = (mag, phase, [0.005, 0.010, 0.015], np.diag([2.0, 2.0, 2.0, 1.0]), 3.0)
    provenance = {}
    auto, _ = reconstruct_qsm(*args, QSMParams(), provenance=provenance)
    assert provenance["tapered_axes"] == [1]
    assert provenance["ringing_evidence"]["axes"] == [1]
    none, _ = reconstruct_qsm(*args, replace(QSMParams(), ringing="none"))
    assert not np.array_equal(auto, none)
