"""QSM stages on phantoms with known answers, and the chain on a simulated subject."""

import numpy as np
import pytest

from ferritin.cohort.dipole import forward_field
from ferritin.engine.qsm.background import smv_kernel, vsharp
from ferritin.engine.qsm.inversion import reference_to_mean, tkd, tv_admm
from ferritin.engine.qsm.mask import brain_mask
from ferritin.engine.qsm.unwrap import combine_echoes, laplacian_unwrap, path_unwrap, refine_frequency


def _grid(n=64):
    c = (n - 1) / 2
    x, y, z = np.meshgrid(*[np.arange(n) - c] * 3, indexing="ij")
    return x, y, z, np.sqrt(x**2 + y**2 + z**2)


def _wrap(p):
    return np.angle(np.exp(1j * p))


def test_laplacian_unwrap_recovers_smooth_phase():
    x, y, z, r = _grid(48)
    true = 3.0 * np.exp(-(r / 14) ** 2) * 4 + 0.004 * x * y  # several wraps
    assert np.abs(true).max() > 3 * np.pi
    mask = r < 18
    got = laplacian_unwrap(_wrap(true))
    # equal up to a harmonic function; compare Laplacian-free residual after a linear fit
    xm, ym, zm = x[mask], y[mask], z[mask]
    # harmonic polynomials up to degree 2 span what Laplacian unwrapping cannot see
    A = np.column_stack([np.ones(mask.sum()), xm, ym, zm, xm * ym, ym * zm, xm * zm, xm**2 - ym**2, ym**2 - zm**2])
    res = (got - true)[mask]
    res -= A @ np.linalg.lstsq(A, res, rcond=None)[0]
    assert np.abs(res).max() < 1e-3 * np.abs(true).max() * 10


def test_path_unwrap_exact_multiples_of_2pi():
    x, y, z, r = _grid(32)
    true = 2.5 * np.exp(-(r / 9) ** 2) * 4
    mask = r < 14
    got = path_unwrap(_wrap(true), mask)
    diff = (got - true)[mask]
    k = np.round(diff / (2 * np.pi))
    assert np.abs(diff - 2 * np.pi * k).max() < 1e-3
    assert len(np.unique(k)) == 1  # one global offset of 2 pi k


def test_echo_combination_recovers_frequency_with_offset():
    x, y, z, r = _grid(40)
    omega = 200 * np.exp(-(r / 10) ** 2)  # rad/s
    phi0 = 0.5
    te = np.array([0.004, 0.008, 0.012, 0.016])
    mag = np.stack([np.exp(-t * 20) * np.ones_like(r) for t in te])
    phase = np.stack([_wrap(phi0 + omega * t) for t in te])
    got = combine_echoes(phase, mag, te, method="path-wls", mask=r < 18)
    mask = r < 18
    assert np.abs(got[mask] - omega[mask]).max() < 1e-3
    lap = combine_echoes(phase, mag, te)
    res = (lap - omega)[mask]
    assert np.abs(res - np.median(res)).max() < 5  # harmonic offsets only, ~2% of the peak
    with pytest.raises(ValueError, match="echo time"):
        combine_echoes(phase, mag, te[:2])


def test_vsharp_removes_outside_source():
    x, y, z, r = _grid(64)
    mask = r < 22
    outside = np.where(((x - 28) ** 2 + y**2 + (z - 20) ** 2) < 64, 9.4, 0.0)  # an air pocket
    bg = forward_field(outside)
    local, em = vsharp(bg, mask, (1, 1, 1), radii_mm=np.arange(12, 1.5, -1))
    assert em.sum() > 0.7 * mask.sum()
    # the local field is defined up to a constant (no DC in the deconvolution)
    residual = local[em] - local[em].mean()
    assert np.abs(residual).max() < 0.05 * np.abs(bg[em]).max()


@pytest.mark.slow
def test_tkd_and_tv_on_sphere_phantom():
    x, y, z, r = _grid(64)
    mask = r < 26
    chi = np.where(r < 8, 0.1, 0.0) + np.where((np.abs(x - 12) < 4) & (np.abs(y) < 5) & (np.abs(z) < 4), -0.05, 0)
    field = forward_field(chi * mask)
    truth = reference_to_mean(chi, mask)
    for inv in (tkd, tv_admm):
        est = inv(field, mask)
        nrmse = np.linalg.norm((est - truth)[mask]) / np.linalg.norm(truth[mask])
        assert nrmse < 0.6, (inv.__name__, nrmse)
        assert est[r < 5].mean() == pytest.approx(truth[r < 5].mean(), rel=0.25)


def test_brain_mask_separates_scalp():
    x, y, z, r = _grid(64)
    brain = r < 20
    scalp = (r > 24) & (r < 28)
    mag = np.where(brain, 100.0, 0) + np.where(scalp, 80.0, 0) + np.random.default_rng(0).normal(0, 3, r.shape) ** 2
    m = brain_mask(mag, (1, 1, 1))
    dice = 2 * (m & brain).sum() / (m.sum() + brain.sum())
    assert dice > 0.95 and not (m & scalp).any()
    with pytest.raises(ValueError, match="all zeros"):
        brain_mask(np.zeros((8, 8, 8)))


def test_nonlinear_fit_recovers_frequency_and_beats_a_single_difference():
    from ferritin.engine.qsm.unwrap import nonlinear_frequency_fit

    rng = np.random.default_rng(3)
    x, y, z, r = _grid(24)
    omega = 150 * np.exp(-(r / 8) ** 2)
    te = 0.003 + 0.004 * np.arange(6)
    mag = np.stack([100 * np.exp(-t / 0.04) * np.ones_like(r) for t in te])
    clean = np.stack([_wrap(0.7 + omega * t) for t in te])
    start = omega + rng.normal(0, 20, omega.shape)  # within the basin: pi / TE_max ~ 130 rad/s
    np.testing.assert_allclose(nonlinear_frequency_fit(clean, mag, te, start), omega, atol=1e-6)
    noisy = np.angle(mag * np.exp(1j * clean) + rng.normal(0, 5, mag.shape) + 1j * rng.normal(0, 5, mag.shape))
    fit = nonlinear_frequency_fit(noisy, mag, te, omega)
    single = _wrap(noisy[1] - noisy[0]) / (te[1] - te[0])
    assert np.std(fit - omega) < 0.3 * np.std(single - omega)
    mask = r < 10
    got = combine_echoes(noisy, mag, te, method="nonlinear", mask=mask, unwrapper="path")
    assert np.median(np.abs(got - omega)[mask]) < 3.0


@pytest.mark.slow
def test_star_and_ilsqr_on_sphere_phantom():
    from ferritin.engine.qsm.inversion import ilsqr, star_qsm

    x, y, z, r = _grid(64)
    mask = r < 26
    chi = np.where(r < 8, 0.1, 0.0) + np.where((np.abs(x - 12) < 4) & (np.abs(y) < 5) & (np.abs(z) < 4), -0.05, 0)
    field = forward_field(chi * mask)
    truth = reference_to_mean(chi, mask)
    for inv in (star_qsm, ilsqr):
        est = inv(field, mask)
        assert np.linalg.norm((est - truth)[mask]) / np.linalg.norm(truth[mask]) < 0.6, inv.__name__
        assert est[r < 5].mean() == pytest.approx(truth[r < 5].mean(), rel=0.25), inv.__name__
        assert est[(np.abs(x - 12) < 2) & (np.abs(y) < 3) & (np.abs(z) < 2)].mean() < 0, inv.__name__


def test_accuracy_metrics():
    from ferritin.engine.qsm.metrics import hfen, nrmse, region_mean_errors

    x, y, z, r = _grid(32)
    mask = r < 12
    truth = np.where(r < 5, 0.1, 0.0)
    assert nrmse(truth + 0.3, truth, mask) == pytest.approx(0.0, abs=1e-10)  # a constant offset is not an error
    assert nrmse(0.5 * truth, truth, mask) == pytest.approx(50.0, rel=1e-9)
    assert hfen(0.5 * truth, truth, mask) == pytest.approx(50.0, rel=1e-9)  # linear filter: same as NRMSE
    blurred = __import__("scipy").ndimage.gaussian_filter(truth, 1.0)
    smooth_offset = truth + 0.02 * (x / 32)  # a slow ramp: large in NRMSE, nearly invisible to HFEN
    assert hfen(smooth_offset, truth, mask) < nrmse(smooth_offset, truth, mask)
    assert hfen(blurred, truth, mask) > 10
    labels = np.where(r < 5, 1, 0)
    est, tru = region_mean_errors(0.5 * truth, truth, mask, labels, {1: "core"})["core"]
    assert est == pytest.approx(0.5 * tru, rel=1e-6) and tru > 0
    with pytest.raises(ValueError, match="one 3-D shape"):
        nrmse(truth[:-1], truth, mask)


@pytest.mark.slow
def test_tv_fits_the_field_only_inside_the_mask():
    """A tight mask: the dipole field of the sphere goes on outside it and must not be fitted as zero there."""
    x, y, z, r = _grid(64)
    chi = np.where(r < 8, 0.1, 0.0)
    field = forward_field(chi)
    mask = r < 12
    truth = reference_to_mean(chi, mask)
    est = tv_admm(field * mask, mask)
    assert est[r < 5].mean() == pytest.approx(truth[r < 5].mean(), rel=0.15)
    # the measured field is reproduced inside the mask
    fitted = forward_field(np.where(mask, est, 0.0))
    assert np.corrcoef(fitted[mask], field[mask])[0, 1] > 0.9
    with pytest.raises(ValueError, match="weight"):
        tv_admm(field, mask, weight=np.ones((3, 3, 3)))


@pytest.mark.slow
def test_over_relaxed_tv_reaches_the_same_minimiser_sooner():
    """Over-relaxation changes the path of ADMM, not its solution: plain and relaxed iterations agree
    once converged, and the relaxed ones are nearer to it after a few iterations."""
    x, y, z, r = _grid(40)
    chi = np.where(r < 6, 0.1, 0.0) + np.where((r > 8) & (r < 10), -0.03, 0.0)
    mask = r < 14
    field = (forward_field(chi) + np.random.default_rng(0).normal(0, 0.002, r.shape)) * mask

    def solve(relaxation, iterations):
        return tv_admm(field, mask, lam=1e-3, relaxation=relaxation, iterations=iterations, tol=0)[mask]

    plain, relaxed = solve(1.0, 400), solve(1.5, 400)
    assert np.linalg.norm(relaxed - plain) < 0.01 * np.linalg.norm(plain)
    early_plain, early_relaxed = solve(1.0, 100), solve(1.5, 100)
    assert np.linalg.norm(early_relaxed - relaxed) < 0.7 * np.linalg.norm(early_plain - plain)
    with pytest.raises(ValueError, match="relaxation"):
        tv_admm(field, mask, relaxation=2.0)


@pytest.mark.slow
def test_chain_keeps_a_strong_deep_source_in_the_mask():
    """The quality step drops local-field outliers only near the mask's edge
    (residual background); an iron-rich nucleus deep inside stays in, with its chi."""
    from ferritin.cohort.dipole import GAMMA_HZ_PER_T
    from ferritin.engine.qsm.chain import QSMParams, reconstruct_qsm

    x, y, z, r = _grid(64)
    brain = r < 26
    nucleus = ((x - 4) ** 2 + y**2 + z**2) < 25
    chi = np.where(nucleus, 0.4, 0.0) + np.where(brain, 0.01 * np.sin(x / 5.0), 0.0)
    field = forward_field(chi * brain)
    te = np.array([0.004, 0.008, 0.012])
    rng = np.random.default_rng(2)
    mag = np.stack([np.where(brain, 100.0 * np.exp(-t / 0.05), 0.0) + rng.normal(0, 1, r.shape) ** 2 for t in te])
    phase = np.stack([_wrap(2 * np.pi * GAMMA_HZ_PER_T * 3.0 * field * 1e-6 * t) for t in te])
    chi_est, mask = reconstruct_qsm(mag, phase, te, np.eye(4), 3.0, QSMParams(inversion="tkd"))
    assert mask[nucleus].all()
    ref = reference_to_mean(chi, mask)
    assert chi_est[nucleus].mean() == pytest.approx(ref[nucleus].mean(), rel=0.3)


@pytest.mark.slow
def test_default_finds_and_removes_simulated_truncation_ringing():
    """A scanner keeps a finite part of k-space: with that simulated, the scalp's Gibbs ringing reaches χ
    as stripes and rings.  The default finds it on every axis, tapers them, removes most of the stripes and
    brings χ nearer the truth."""
    from dataclasses import replace

    from ferritin.cohort.simulate import preset, sample_participants, simulate_subject
    from ferritin.engine.qsm.chain import QSMParams, reconstruct_qsm
    from ferritin.engine.qsm.metrics import high_frequency_share, nrmse

    spec = preset("tiny", n_echoes=2, seed=5, kspace_truncation=2)
    t = simulate_subject(spec, sample_participants(spec).iloc[0].to_dict(), 0)
    brain = t.brain_mask_native.astype(bool)
    share, error = {}, {}
    provenance = {}
    for ringing in ("none", "auto"):
        chi, mask = reconstruct_qsm(t.mag, t.phase, t.echo_times, t.gre_affine, spec.b0,
                                    replace(QSMParams(), ringing=ringing), brain=brain, provenance=provenance)
        share[ringing] = high_frequency_share(chi, mask)
        error[ringing] = nrmse(chi, t.chi_native, mask & brain)
    assert provenance["tapered_axes"] == [0, 1, 2]
    assert share["auto"] < 0.3 * share["none"]
    assert error["auto"] < 0.75 * error["none"]


def test_tv_difference_operators_are_periodic_and_adjoint():
    from ferritin.engine.qsm.inversion import _div, _grad, _neg_div

    rng = np.random.default_rng(3)
    x = rng.normal(size=(7, 6, 5))
    g = rng.normal(size=(3, 7, 6, 5))
    vs = (1.0, 2.0, 3.0)
    rolled = np.stack([(np.roll(x, -1, axis=a) - x) / vs[a] for a in range(3)])
    np.testing.assert_allclose(_grad(x, vs), rolled, rtol=0, atol=1e-14)
    np.testing.assert_allclose(_neg_div(g, vs, out=np.empty(x.shape)), -_div(g, vs), rtol=0, atol=1e-14)
    # -div is grad's adjoint, which the ADMM's x-update relies on
    assert np.isclose(np.sum(_grad(x, vs) * g), np.sum(x * _neg_div(g, vs, out=np.empty(x.shape))))


@pytest.mark.parametrize("voxel_size", [(1.0, 1.0, 1.0), (0.9, 0.9, 2.0), (3.0, 3.0, 3.0)])
@pytest.mark.parametrize("radius_mm", [2.0, 5.0, 6.0])
def test_distance_morphology_equals_the_ball(voxel_size, radius_mm):
    """Erosion and dilation by a distance transform give exactly the sets of the ball structuring
    element they replace, including erosion from the array's edge."""
    from scipy import ndimage

    from ferritin.engine.qsm.mask import ball, dilate_by, erode_by

    rng = np.random.default_rng(int(radius_mm))
    m = ndimage.gaussian_filter(rng.standard_normal((40, 44, 36)), 2) > 0.1
    m[:, :, :3] = True  # tissue cut by the field of view
    b = ball(radius_mm / np.asarray(voxel_size))
    assert np.array_equal(dilate_by(m, radius_mm, voxel_size), ndimage.binary_dilation(m, b))
    assert np.array_equal(erode_by(m, radius_mm, voxel_size), ndimage.binary_erosion(m, b))


@pytest.mark.parametrize("voxel_size", [(1.0, 1.0, 1.0), (0.9, 0.9, 2.0)])
def test_mask_depth_is_the_distance_to_the_outside_including_beyond_the_array(voxel_size):
    from scipy import ndimage

    from ferritin.engine.qsm.mask import mask_depth

    rng = np.random.default_rng(3)
    m = ndimage.gaussian_filter(rng.standard_normal((30, 34, 26)), 2) > 0.1
    m[:, :, :3] = True  # tissue cut by the field of view: the array's edge is outside
    expected = ndimage.distance_transform_edt(np.pad(m, 1), sampling=voxel_size)[1:-1, 1:-1, 1:-1]
    np.testing.assert_allclose(mask_depth(m, voxel_size), expected, rtol=1e-6)


def test_support_box():
    from ferritin.engine.qsm.chain import support_box

    m = np.zeros((10, 12, 14), bool)
    m[2:5, 3, 7:9] = True
    assert support_box(m) == (slice(2, 5), slice(3, 4), slice(7, 9))
    assert support_box(m, margin=3) == (slice(0, 8), slice(0, 7), slice(4, 12))
    with pytest.raises(ValueError, match="empty"):
        support_box(np.zeros((3, 3, 3), bool))


def test_chain_does_not_depend_on_empty_field_of_view():
    """The chain works on the mask's bounding box: the same head in a field of view with more empty
    space around it gives the same chi (to the inversion's tolerance) and the same mask."""
    from ferritin.cohort.dipole import GAMMA_HZ_PER_T
    from ferritin.engine.qsm.chain import QSMParams, reconstruct_qsm

    x, y, z, r = _grid(48)
    brain = r < 18
    chi = np.where(brain, 0.02 * np.sin(x / 4.0) + np.where(((x - 3) ** 2 + y**2 + z**2) < 16, 0.2, 0.0), 0.0)
    field = forward_field(chi)
    te = np.array([0.004, 0.008, 0.012])
    rng = np.random.default_rng(5)
    mag = np.stack([np.where(brain, 100.0 * np.exp(-t / 0.05), 0.0) + rng.normal(0, 1, r.shape) ** 2 for t in te])
    phase = np.stack([_wrap(2 * np.pi * GAMMA_HZ_PER_T * 3.0 * field * 1e-6 * t) for t in te])
    params = QSMParams(ringing="none")
    small, small_mask = reconstruct_qsm(mag, phase, te, np.eye(4), 3.0, params)
    pad = [(0, 0), (7, 13), (5, 0), (0, 11)]
    big, big_mask = reconstruct_qsm(np.pad(mag, pad), np.pad(phase, pad), te, np.eye(4), 3.0, params)
    inner = (slice(7, 55), slice(5, 53), slice(0, 48))
    assert np.array_equal(big_mask[inner], small_mask) and big_mask.sum() == small_mask.sum()
    assert np.abs(big[inner] - small)[small_mask].max() < 1e-5


def test_phasor_writes_into_a_given_buffer_and_refuses_a_wrong_one():
    from ferritin.engine.qsm.phasor import phasor

    rng = np.random.default_rng(0)
    phase = rng.uniform(-np.pi, np.pi, (4, 5, 6)).astype(np.float32)
    mag = rng.uniform(0, 2, phase.shape).astype(np.float32)
    buffer = np.empty(phase.shape, np.complex64)
    out = phasor(phase, mag, out=buffer)
    assert out is buffer
    np.testing.assert_allclose(out, mag * np.exp(1j * phase), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="complex array of shape"):
        phasor(phase, mag, out=np.empty((4, 5), np.complex64))


@pytest.mark.parametrize("shape, voxel, radius", [((24, 25, 16), (1.0, 1.0, 1.0), 5.0),
                                                  ((31, 20, 18), (0.7, 1.2, 2.5), 4.0),
                                                  ((6, 7, 6), (1.0, 1.0, 1.0), 12.0)])  # ball wider than the grid
def test_smv_kernel_is_the_fft_of_the_normalised_ball(shape, voxel, radius):
    # the ball drawn on the whole periodic grid, each voxel at its nearest offset from voxel 0
    offsets = np.meshgrid(*[np.fft.fftfreq(n, 1.0 / n) for n in shape], indexing="ij")
    ball = sum((o * v / radius) ** 2 for o, v in zip(offsets, voxel)) <= 1.0
    expected = np.fft.fftn(ball / ball.sum())
    assert np.abs(expected.imag).max() < 1e-12  # even, so real
    full = smv_kernel(shape, radius, voxel)
    half = smv_kernel(shape, radius, voxel, half=True, dtype=np.float32)
    np.testing.assert_allclose(full, expected.real, atol=1e-12)
    assert half.dtype == np.float32 and half.shape == (*shape[:2], shape[2] // 2 + 1)
    np.testing.assert_allclose(half, expected.real[..., : shape[2] // 2 + 1], atol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_refine_frequency_averages_every_echo_and_leaves_the_start_untouched(dtype):
    rng = np.random.default_rng(3)
    te = np.arange(1, 9) * 4e-3
    omega = rng.uniform(-300, 300, (12, 13, 14))  # rad/s: up to ~1.2 turns at the last echo
    clean = 0.4 + omega[None] * te[:, None, None, None]
    phase = np.angle(np.exp(1j * (clean + rng.normal(0, 0.05, clean.shape)))).astype(dtype)
    magnitude = np.ones(phase.shape, dtype)
    start = omega + rng.normal(0, 20, omega.shape)  # within pi / TE_max of the truth
    before = start.copy()
    refined = refine_frequency(phase, magnitude, te, start)
    assert np.array_equal(start, before)
    # the weighted fit's noise over 8 echoes: 0.05 rad / sqrt(sum (TE - mean)^2) ~ 3.4 rad/s
    assert np.sqrt(np.mean((refined - omega) ** 2)) < 6.0
    assert np.sqrt(np.mean((start - omega) ** 2)) > 15.0
