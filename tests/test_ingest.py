"""Ingest: exact round trip, re-run no-op, laziness, failure isolation, atomicity."""

import shutil

import dask
import nibabel as nib
import numpy as np
import pytest
import xarray as xr

from ferritin.cohort.store import CohortStore
from ferritin.engine.ingest import ingest


@pytest.fixture(scope="module")
def ingested(tiny_bids, client, tmp_path_factory):
    root, table = tiny_bids
    store = tmp_path_factory.mktemp("store") / "cohort.zarr"
    result = ingest(root, store, client, progress=False)
    return root, table, store, result


@pytest.mark.slow  # a simulated cohort ingested on a Dask cluster
def test_round_trip_every_voxel_and_affine(ingested):
    root, table, store, result = ingested
    assert result.written == sorted(table["participant_id"]) and not result.failed
    tree = xr.open_datatree(store, engine="zarr")
    for sub in table["participant_id"]:
        ds = tree[f"native/{sub}"].to_dataset()
        anat = root / sub / "anat"
        for n in range(1, ds.sizes["echo"] + 1):
            for part, var in (("mag", "megre_mag"), ("phase", "megre_phase")):
                img = nib.load(anat / f"{sub}_echo-{n}_part-{part}_MEGRE.nii.gz")
                np.testing.assert_array_equal(ds[var].isel(echo=n - 1).values, np.asarray(img.dataobj))
                np.testing.assert_array_equal(np.array(ds[var].attrs["affine"]), img.affine)
        t1 = nib.load(anat / f"{sub}_T1w.nii.gz")
        np.testing.assert_array_equal(ds["t1w"].values, np.asarray(t1.dataobj))
        np.testing.assert_array_equal(np.array(ds.attrs["t1w_affine"]), t1.affine)
        assert ds.attrs["b0_tesla"] == 3.0
        np.testing.assert_allclose(ds["echo_time"].values, [0.0021, 0.0045, 0.0069, 0.0093])


@pytest.mark.slow  # a simulated cohort ingested on a Dask cluster
def test_participants_node(ingested):
    root, table, store, _ = ingested
    tree = xr.open_datatree(store, engine="zarr")
    p = tree["participants"].to_dataset()
    assert list(p["subject"].values) == list(table["participant_id"])
    assert list(p["group"].values) == list(table["group"])
    np.testing.assert_allclose(p["age"].values, table["age"].values)
    # controls have no clinical scores: n/a -> NaN
    nc = p["group"].values == "NC"
    assert np.isnan(p["alsfrs_r"].values[nc]).all()


@pytest.mark.slow  # a simulated cohort ingested on a Dask cluster
def test_rerun_is_noop(ingested, client):
    root, table, store, _ = ingested
    s = CohortStore(store)
    before = {sub: s.record(f"native/{sub}") for sub in table["participant_id"]}
    again = ingest(root, store, client, progress=False)
    assert again.written == [] and again.skipped == sorted(table["participant_id"])
    assert {sub: s.record(f"native/{sub}") for sub in table["participant_id"]} == before


class CountingScheduler:
    def __init__(self):
        self.calls = 0

    def __call__(self, dsk, keys, **kwargs):
        self.calls += 1
        return dask.get(dsk, keys, **kwargs)


@pytest.mark.slow  # a simulated cohort ingested on a Dask cluster
def test_store_opens_lazily(ingested):
    _, table, store, _ = ingested
    counter = CountingScheduler()
    with dask.config.set(scheduler=counter):
        tree = xr.open_datatree(store, engine="zarr", chunks={})
        mag = tree[f"native/{table['participant_id'][0]}"]["megre_mag"]
        assert isinstance(mag.data, dask.array.Array)
        selected = mag.isel(echo=0).mean()
        assert counter.calls == 0
        selected.compute()
        assert counter.calls == 1


def test_where_on_stacked_mni_arrays(tmp_path):
    """The query pattern of the README: chi.where(group == 'ALS') on a stacked node."""
    from ferritin.cohort.layout import mni_stack_dataset
    from ferritin.cohort.templates import mni_grid

    grid = mni_grid(8.0)
    subjects = ["sub-001", "sub-002", "sub-003"]
    chi = np.stack([np.full(grid.shape, v, np.float32) for v in (1.0, 2.0, 3.0)])
    store = CohortStore(tmp_path / "c.zarr", create=True)
    participants = {"group": ["ALS", "NC", "ALS"], "age": [50.0, 60.0, 70.0]}
    store.write_node("mni", mni_stack_dataset({"chi": chi}, subjects, grid, participants), stage="stack", digest="x")
    store.consolidate()
    ds = xr.open_datatree(tmp_path / "c.zarr", engine="zarr", chunks={})["mni"].to_dataset()
    als = ds["chi"].where(ds.group == "ALS")
    assert float(als.mean()) == 2.0  # NC masked out
    assert ds["chi"].sel(x=-40, y=-24, z=56, method="nearest").shape == (3,)
    # with the cohort opener the per-subject coordinates are in memory: drop works
    from ferritin.cohort.access import open_cohort

    mni = open_cohort(tmp_path / "c.zarr")["mni"].to_dataset()
    als = mni["chi"].where(mni.group == "ALS", drop=True)
    assert list(als.subject.values) == ["sub-001", "sub-003"]
    assert list(mni.cohort.select(group="ALS", age=(55, 80)).subject.values) == ["sub-003"]
    assert mni.cohort.participants.loc["sub-002", "group"] == "NC"
    assert mni.chi.groupby("group").mean(...).sel(group="ALS") == 2.0


@pytest.mark.slow  # a simulated cohort ingested on a Dask cluster
def test_failed_subject_isolated_and_nothing_half_written(tiny_bids, client, tmp_path):
    root, table = tiny_bids
    copy = tmp_path / "bids"
    shutil.copytree(root, copy, ignore=shutil.ignore_patterns("derivatives"))
    bad = table["participant_id"][1]
    p = copy / bad / "anat" / f"{bad}_echo-3_part-phase_MEGRE.nii.gz"
    p.write_bytes(p.read_bytes()[:500])
    store = tmp_path / "c.zarr"
    result = ingest(copy, store, client, progress=False)
    assert bad in result.failed and "echo-3_part-phase" in result.failed[bad]
    assert sorted(result.written) == sorted(set(table["participant_id"]) - {bad})
    s = CohortStore(store)
    assert not s.exists(f"native/{bad}")
    assert s.failures()["ingest"][bad] == result.failed[bad]
    assert not s.staging.exists() or not any(s.staging.iterdir())
    # fixing the file and re-running ingests only that subject and clears the failure
    shutil.copy(root / bad / "anat" / p.name, p)
    again = ingest(copy, store, client, progress=False)
    assert again.written == [bad] and not again.failed
    assert "ingest" not in s.failures()


def test_killed_writer_leaves_no_visible_node(tmp_path):
    store = CohortStore(tmp_path / "c.zarr", create=True)
    ds = xr.Dataset({"a": (("i",), np.arange(5.0))})

    class Boom(Exception):
        pass

    original = xr.Dataset.to_zarr

    def exploding(self, *a, **k):
        original(self, *a, **k)
        raise Boom

    try:
        xr.Dataset.to_zarr = exploding
        with pytest.raises(Boom):
            store.write_node("native/sub-01", ds, stage="ingest", digest="d")
    finally:
        xr.Dataset.to_zarr = original
    assert not store.exists("native/sub-01") and store.record("native/sub-01") is None
    store.write_node("native/sub-01", ds, stage="ingest", digest="d")
    assert store.is_current("native/sub-01", "d")


def test_store_refuses_bad_nodes(tmp_path):
    store = CohortStore(tmp_path / "c.zarr", create=True)
    for node in ("../x", "native/../../x", ""):
        with pytest.raises(ValueError):
            store.node_path(node)
    with pytest.raises(FileNotFoundError, match="no cohort store"):
        CohortStore(tmp_path / "missing.zarr")
