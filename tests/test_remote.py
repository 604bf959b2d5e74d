"""Publishing a cohort store to S3-compatible storage (moto's server on loopback) and reading it back."""

from __future__ import annotations

import numpy as np
import pytest

moto_server = pytest.importorskip("moto.server")
pytest.importorskip("s3fs")

from ferritin.cohort import open_cohort  # noqa: E402
from ferritin.cohort.remote import publish  # noqa: E402
from ferritin.engine.ingest import ingest  # noqa: E402

pytestmark = pytest.mark.slow  # a local S3 server


@pytest.fixture(scope="module")
def s3():
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    opts = {"key": "test", "secret": "test", "client_kwargs": {"endpoint_url": f"http://{host}:{port}",
                                                                "region_name": "us-east-1"}}
    import boto3
    import s3fs

    boto3.client("s3", endpoint_url=f"http://{host}:{port}", aws_access_key_id="test", aws_secret_access_key="test",
                 region_name="us-east-1").create_bucket(Bucket="cohorts")
    fs = s3fs.S3FileSystem(**opts)
    yield opts, fs
    server.stop()


@pytest.fixture(scope="module")
def store(tiny_bids, client, tmp_path_factory):
    root, table = tiny_bids
    path = tmp_path_factory.mktemp("pub") / "cohort.zarr"
    ingest(root, path, client, progress=False)
    return path, table


def test_published_store_reads_back_identically(s3, store):
    opts, fs = s3
    path, table = store
    n = publish(path, "s3://cohorts/study.zarr", opts)
    assert n > 10 and fs.exists("cohorts/study.zarr/zarr.json")
    remote = open_cohort("s3://cohorts/study.zarr", storage_options=opts)
    local = open_cohort(path)
    sub = table["participant_id"][0]
    np.testing.assert_array_equal(remote[f"native/{sub}"]["megre_phase"].values,
                                  local[f"native/{sub}"]["megre_phase"].values)
    assert list(remote["participants"]["group"].values) == list(table["group"])


def test_interrupted_publish_leaves_no_visible_store(s3, store, monkeypatch):
    opts, fs = s3
    path, _ = store
    import ferritin.cohort.remote as remote

    real_fs = remote._fs

    class Dropping:
        """The real S3 file system, whose connection drops after five uploads."""

        def __init__(self, fs):
            self.fs, self.calls = fs, 0

        def put_file(self, *a, **k):
            self.calls += 1
            if self.calls > 5:
                raise ConnectionError("network dropped")
            return self.fs.put_file(*a, **k)

        def __getattr__(self, name):
            return getattr(self.fs, name)

    monkeypatch.setattr(remote, "_fs", lambda url, so: (Dropping(real_fs(url, so)[0]), real_fs(url, so)[1]))
    with pytest.raises(ConnectionError):
        publish(path, "s3://cohorts/broken.zarr", opts)
    assert not fs.exists("cohorts/broken.zarr/zarr.json")  # readers see no store
    monkeypatch.setattr(remote, "_fs", real_fs)
    publish(path, "s3://cohorts/broken.zarr", opts)  # a retry completes it
    assert open_cohort("s3://cohorts/broken.zarr", storage_options=opts)["participants"].sizes["subject"] > 0


def test_republish_removes_what_the_new_version_dropped(s3, store):
    opts, fs = s3
    path, _ = store
    publish(path, "s3://cohorts/v.zarr", opts)
    fs.pipe("cohorts/v.zarr/native/old-node/zarr.json", b"{}")  # left from an earlier version
    publish(path, "s3://cohorts/v.zarr", opts)
    assert not fs.exists("cohorts/v.zarr/native/old-node/zarr.json")


def test_cli_publish(s3, store, capsys, monkeypatch):
    from ferritin.engine.cli import main

    opts, fs = s3
    path, _ = store
    endpoint = opts["client_kwargs"]["endpoint_url"]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    assert main(["publish", str(path), "s3://cohorts/cli.zarr", "--endpoint-url", endpoint]) == 0
    assert fs.exists("cohorts/cli.zarr/zarr.json") and "published" in capsys.readouterr().out
    assert main(["publish", str(path.parent / "nothing.zarr"), "s3://cohorts/x.zarr"]) == 2


def test_group_glm_reads_a_published_cohort_array_lazily(s3, tmp_path, client):
    """Users (and ``stats``) compute on a cohort array straight from object storage."""
    import xarray as xr

    from ferritin.cohort.store import CohortStore
    from ferritin.stats.glm import fit_glm, t_contrast

    opts, _ = s3
    rng = np.random.default_rng(5)
    n, shape = 12, (10, 9, 8)
    group = np.repeat(["ALS", "NC"], n // 2)
    y = rng.normal(size=(n, *shape)).astype(np.float32)
    y[group == "ALS", 2:5, 2:5, 2:5] += 3.0
    local = CohortStore(tmp_path / "stack.zarr", create=True)
    ds = xr.Dataset({"chi": (("subject", "x", "y", "z"), y)},
                    coords={"subject": [f"sub-{i:02d}" for i in range(n)], "group": ("subject", group)})
    local.write_node("mni/chi", ds.chunk({"subject": n, "x": 5, "y": 5, "z": 4}), stage="stack", digest="0")
    local.consolidate()
    publish(local.path, "s3://cohorts/stack.zarr", opts)
    remote = open_cohort("s3://cohorts/stack.zarr", storage_options=opts)["mni/chi"].to_dataset()
    assert remote["chi"].chunks is not None  # lazy: nothing read yet
    assert list(remote.cohort.select(group="ALS").subject.values) == [f"sub-{i:02d}" for i in range(n // 2)]
    X = np.column_stack([group == "ALS", group == "NC"]).astype(float)
    t_remote = t_contrast(fit_glm(remote["chi"].data, X), [1, -1]).compute()
    t_local = t_contrast(fit_glm(y, X), [1, -1]).compute()
    np.testing.assert_allclose(t_remote, t_local, rtol=1e-6)
    assert t_remote[3, 3, 3] > 3 and abs(t_remote[8, 1, 1]) < t_remote[3, 3, 3]
