import numpy as np
import pytest

from ferritin.cohort.dipole import b0_direction, dipole_kernel, forward_field


def test_kernel_zero_at_magic_angle_and_dc():
    d = dipole_kernel((64, 64, 64), (1, 1, 1), (0, 0, 1))
    assert d[0, 0, 0] == 0
    k = np.fft.fftfreq(64)
    # k along z only: D = 1/3 - 1 = -2/3; in the xy plane: 1/3
    assert d[0, 0, 5] == pytest.approx(-2 / 3)
    assert d[5, 0, 0] == pytest.approx(1 / 3)
    # magic angle: cos^2 = 1/3 -> kz^2 = (kx^2 + ky^2)/2 ; kx=ky=kz, pick kx=kz*sqrt(2)
    theta = np.arccos(1 / np.sqrt(3))
    # find grid point with kz/|k| closest to cos(theta) and check |D| is small there
    kx, ky, kz = np.meshgrid(k, k, k, indexing="ij")
    kn = np.sqrt(kx**2 + ky**2 + kz**2)
    cos = np.divide(np.abs(kz), kn, out=np.zeros_like(kn), where=kn > 0)
    near = np.abs(cos - np.cos(theta)) < 1e-3
    assert near.any() and np.abs(d[near]).max() < 2e-3


def test_kernel_symmetry():
    d = dipole_kernel((33, 31, 29), (1.0, 1.2, 2.0), (0.1, 0.2, 0.97))  # odd: no Nyquist plane
    # real-valued kernel of a real field: D(k) = D(-k)
    flipped = np.roll(np.flip(d), shift=1, axis=(0, 1, 2))
    np.testing.assert_allclose(d, flipped, atol=1e-12)
    assert d.max() <= 1 / 3 + 1e-12 and d.min() >= -2 / 3 - 1e-12


def test_forward_field_matches_analytic_sphere():
    n, a = 96, 10.0
    c = (n - 1) / 2
    x, y, z = np.meshgrid(*[np.arange(n) - c] * 3, indexing="ij")
    r = np.sqrt(x**2 + y**2 + z**2)
    chi = (r <= a).astype(float)
    f = forward_field(chi, (1, 1, 1), (0, 0, 1))
    cos2 = np.divide(z**2, r**2, out=np.zeros_like(r), where=r > 0)
    analytic = np.divide(a**3, r**3, out=np.zeros_like(r), where=r > 0) * (3 * cos2 - 1) / 3
    outside = (r > a + 2) & (r < 35)
    err = np.linalg.norm(f[outside] - analytic[outside]) / np.linalg.norm(analytic[outside])
    assert err < 0.02
    # inside a uniformly magnetised sphere the (Lorentz-corrected) field vanishes
    assert np.abs(f[r < a - 2]).max() < 0.02


def test_oblique_b0_direction_rotates_field():
    ang = np.deg2rad(20)
    aff = np.eye(4)
    aff[:3, :3] = [[1, 0, 0], [0, np.cos(ang), -np.sin(ang)], [0, np.sin(ang), np.cos(ang)]]
    b = b0_direction(aff)
    np.testing.assert_allclose(b, [0, np.sin(ang), np.cos(ang)], atol=1e-12)
    # a point source's field along B0 is positive-lobed: max of field along b
    n = 48
    chi = np.zeros((n, n, n))
    chi[24, 24, 24] = 1
    f = forward_field(chi, (1, 1, 1), b)
    p = np.array([24, 24, 24]) + np.round(6 * b).astype(int)
    q = np.array([24, 24, 24]) + np.round(6 * np.array([0, np.cos(ang), -np.sin(ang)])).astype(int)
    assert f[tuple(p)] > 0 > f[tuple(q)]


def test_kernel_input_checks():
    with pytest.raises(ValueError, match="voxel_size"):
        dipole_kernel((8, 8, 8), (1, 0, 1))
    with pytest.raises(ValueError, match="b0_dir"):
        dipole_kernel((8, 8, 8), (1, 1, 1), (0, 0, 0))
    with pytest.raises(ValueError, match="3-D"):
        forward_field(np.zeros((4, 4)))


def test_even_kernel_maps_real_to_real_and_differs_only_on_nyquist_planes():
    """With B0 oblique to the grid the plain kernel is not even on the Nyquist planes (it maps a real
    image to a complex one); its even part is, which lets the inversions use real-input FFTs."""
    from ferritin.cohort.dipole import even_dipole_kernel

    shape, b = (16, 12, 10), (0.3, -0.2, 0.93)
    plain, even = dipole_kernel(shape, (1.0, 1.2, 1.5), b), even_dipole_kernel(shape, (1.0, 1.2, 1.5), b)
    x = np.random.default_rng(0).standard_normal(shape)
    assert np.abs(np.fft.ifftn(plain * np.fft.fftn(x)).imag).max() > 1e-3
    assert np.abs(np.fft.ifftn(even * np.fft.fftn(x)).imag).max() < 1e-12
    off_nyquist = np.ones(shape, bool)
    for axis, n in enumerate(shape):
        index = [slice(None)] * 3
        index[axis] = n // 2
        off_nyquist[tuple(index)] = False
    assert np.array_equal(plain[off_nyquist], even[off_nyquist])
    assert not np.allclose(plain, even)
