"""Scanner integers kept as integers in the cohort store, and read back as the floats they were."""

import numpy as np
import pytest
import xarray as xr

from ferritin.cohort.packing import integer_coding, packed_variable
from ferritin.cohort.store import CohortStore


def _scanner_image(bits, slope, inter, shape=(6, 40, 40, 30), seed=0):
    """Integer codes scaled as NIfTI does: float32 slope and intercept, decoded in float64."""
    k = np.random.default_rng(seed).integers(0, 2**bits, shape)
    k.reshape(-1)[:500] = 0  # background
    values = (k * float(np.float32(slope)) + float(np.float32(inter))).astype(np.float32)
    return k, values


@pytest.mark.parametrize("bits, slope, inter", [(12, 2.36166056166056, 0.0), (12, np.pi / 4096, -np.pi),
                                                (16, 0.0137, -3.5), (10, 1000 / 1023, 0.0), (8, 1.0, 0.0)])
def test_scanner_integers_are_found_and_decode_to_the_same_floats(bits, slope, inter):
    k, values = _scanner_image(bits, slope, inter)
    coding = integer_coding(values)
    assert coding is not None
    assert coding.dtype == (np.uint8 if bits <= 8 else np.uint16)
    codes = coding.encode(values)
    np.testing.assert_array_equal(codes.astype(np.int64) - codes.min(), k - k.min())  # the scanner's own codes
    np.testing.assert_array_equal(coding.decode(codes), values)  # header slope recovered: bit for bit


@pytest.mark.parametrize("make", [
    lambda rng: rng.standard_normal((4, 30, 30)).astype(np.float32),  # computed data
    lambda rng: np.concatenate([(rng.integers(0, 4096, (2, 30, 30)) * 0.5).astype(np.float32),
                                (rng.integers(0, 4096, (2, 30, 30)) * 0.5 * np.sqrt(2)).astype(np.float32)]),
    lambda rng: rng.integers(0, 2**18, (4, 30, 30)).astype(np.float32),  # more levels than 16 bits hold
    lambda rng: np.full((4, 30, 30), 7.5, np.float32),  # constant
    lambda rng: np.where(rng.random((4, 30, 30)) < 0.01, np.nan, 1.0).astype(np.float32),
])
def test_values_on_no_integer_grid_stay_floats(make):
    values = make(np.random.default_rng(1))
    assert integer_coding(values) is None
    var = packed_variable(("e", "i", "j"), values, {"units": "a.u."})
    assert var.dtype == np.float32 and "scale_factor" not in var.attrs


def test_one_stray_value_between_grid_points_keeps_the_image_float():
    _, values = _scanner_image(12, 0.25, 0.0, shape=(3, 30, 30, 20))
    values[2, 5, 5, 5] += np.float32(0.1)  # 0.4 of a step: not a scanner value
    assert integer_coding(values) is None


@pytest.mark.parametrize("stray", [np.nan, np.inf])
def test_one_value_that_is_not_a_number_keeps_the_image_float(stray):
    _, values = _scanner_image(12, 0.25, 0.0, shape=(3, 30, 30, 20))
    values[1, 2, 3, 4] = stray  # one voxel: the sample used for the step misses it, the check does not
    assert integer_coding(values) is None


def test_store_keeps_codes_and_reads_back_float32(tmp_path):
    k, mag = _scanner_image(12, 2.36166056166056, 0.0)
    _, phase = _scanner_image(12, np.pi / 4096, -np.pi, seed=1)
    computed = np.random.default_rng(2).standard_normal(mag.shape).astype(np.float32)
    ds = xr.Dataset({"mag": packed_variable(("e", "i", "j", "k"), mag, {"units": "a.u."}),
                     "phase": packed_variable(("e", "i", "j", "k"), phase, {"units": "rad"}),
                     "computed": packed_variable(("e", "i", "j", "k"), computed, {})})
    store = CohortStore(tmp_path / "c.zarr", create=True)
    store.write_node("native/sub-01", ds, stage="test", digest="x")
    raw = xr.open_zarr(tmp_path / "c.zarr", group="native/sub-01", mask_and_scale=False, zarr_format=3,
                       consolidated=False)
    assert raw["mag"].dtype == np.uint16 and raw["phase"].dtype == np.uint16 and raw["computed"].dtype == np.float32
    back = store.open_node("native/sub-01")
    for name, original in (("mag", mag), ("phase", phase), ("computed", computed)):
        assert back[name].dtype == np.float32
        np.testing.assert_array_equal(back[name].values, original)  # zeros stay zeros, not fill values
    assert back["mag"].attrs["units"] == "a.u."
    tree = store.open_tree()
    np.testing.assert_array_equal(tree["native/sub-01"]["phase"].values, phase)
    stored = sum(f.stat().st_size for f in (tmp_path / "c.zarr" / "native" / "sub-01" / "mag").rglob("*") if f.is_file())
    assert stored < 0.5 * mag.nbytes  # 12-bit codes in 16 bits, compressed: well under the float32 bytes
