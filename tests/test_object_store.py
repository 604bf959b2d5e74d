"""A study whose cohort store is on object storage (a transactional store at an s3:// URL), against moto's
S3 server on loopback: a run identical to a local one, a writer killed in the middle of its commit, a second
run refused, a lock released by hand, and the store read back at an earlier snapshot."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import yaml

pytest.importorskip("icechunk")
moto_server = pytest.importorskip("moto.server")

from conftest import FAST_STUDY, assert_same_outputs, stage_outputs  # noqa: E402
from moto.moto_server.werkzeug_app import MotoRequestHandler  # noqa: E402
from werkzeug.serving import make_server  # noqa: E402

from ferritin.cohort import open_cohort  # noqa: E402
from ferritin.cohort.store import CohortStore, StoreLocked  # noqa: E402

pytestmark = pytest.mark.slow  # a local S3 server and a participant level

BIN = Path(sys.executable).parent
BRANCH_REF = "/refs/branch.main/ref.json"


class KillingS3Server(moto_server.ThreadedMotoServer):
    """moto's S3 on loopback that can kill a writer process in the middle of its commit.

    Armed with a process id, it waits for that writer's chunk uploads and then
    answers the writer's next branch-reference update (the one conditional write
    that makes a commit visible) by killing the process instead.
    """

    victim: int | None = None
    chunks_seen = 0

    def _server_entry(self) -> None:
        app = moto_server.DomainDispatcherApplication(moto_server.create_backend_app)

        def kill_mid_commit(environ, start_response):
            if self.victim is not None and environ["REQUEST_METHOD"] == "PUT":
                path = environ["PATH_INFO"]
                if "/chunks/" in path:
                    self.chunks_seen += 1
                elif path.endswith(BRANCH_REF) and self.chunks_seen:
                    os.kill(self.victim, signal.SIGKILL)
                    self.victim = None
                    start_response("503 Service Unavailable", [("Content-Length", "0")])
                    return [b""]
            return app(environ, start_response)

        self._server = make_server(self._ip_address, self._port, kill_mid_commit, True,
                                   request_handler=MotoRequestHandler)
        self._server_ready_event.set()
        self._server.serve_forever()


@pytest.fixture(scope="module")
def s3():
    """The server, its bucket ``cohorts``, and the AWS environment variables pointing at it (also for children)."""
    server = KillingS3Server(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
           "AWS_REGION": "us-east-1"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    import boto3

    boto3.client("s3").create_bucket(Bucket="cohorts")
    yield server
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    server.stop()


def _chi(value: float) -> xr.Dataset:
    """A node whose chunks are too large to be inlined into the manifest (random, so incompressible)."""
    noise = np.random.default_rng(0).uniform(0, 1e-3, (16, 16, 16))
    return xr.Dataset({"chi": (("i", "j", "k"), (value + noise).astype(np.float32))})


WRITER = """
import sys
from ferritin.cohort.store import CohortStore
from test_object_store import _chi
store = CohortStore(sys.argv[1])
with store.lock("writer"):
    print("locked", flush=True)
    sys.stdin.readline()  # go
    if sys.argv[2] == "write":
        store.write_node("derived/sub-01/qsm", _chi(2.0), stage="qsm", digest="v2")
    else:
        sys.stdin.read()
"""


def _writer(url: str, action: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", WRITER, url, action], cwd=Path(__file__).parent,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def test_study_on_s3_matches_a_local_run_and_reuses_what_it_wrote(s3, tiny_bids, local_reference, tmp_path):
    root, _ = tiny_bids
    subjects, reference = local_reference
    spec = tmp_path / "fast.yaml"
    spec.write_text(yaml.safe_dump(FAST_STUDY))
    cmd = [str(BIN / "ferritin"), "run", str(root), "s3://cohorts/study", "participant", "--participant-label",
           *subjects, "--workers", "2", "--spec", str(spec), "--no-progress"]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stdout + first.stderr
    url = "s3://cohorts/study/cohort.zarr"
    assert_same_outputs(stage_outputs(url, subjects), reference)

    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"ingested 0, unchanged {len(subjects)}" in again.stdout
    for stage in ("anat", "qsm"):
        assert f"{stage}: computed 0, unchanged {len(subjects)}, failed 0" in again.stdout, again.stdout

    store = CohortStore(url)
    history = store.history()
    created = next(h["snapshot"] for h in history if h["message"] == "create the cohort store")
    assert open_cohort(url, snapshot=created)["derived"].children == {}
    tree = open_cohort(url)
    assert sorted(tree["derived"].children) == subjects
    assert "ferritin_lock" not in tree.attrs  # both runs released their lock


def test_writer_killed_mid_commit_leaves_the_previous_node(s3):
    url = "s3://cohorts/killed.zarr"
    store = CohortStore(url, create=True)
    store.write_node("derived/sub-01/qsm", _chi(1.0), stage="qsm", digest="v1")
    writer = _writer(url, "write")
    assert writer.stdout.readline().strip() == "locked"
    s3.chunks_seen, s3.victim = 0, writer.pid
    writer.stdin.write("go\n")
    writer.stdin.flush()
    assert writer.wait(timeout=120) == -signal.SIGKILL
    assert s3.chunks_seen > 0  # the writer had uploaded its chunks when it died

    node = CohortStore(url).open_node("derived/sub-01/qsm")
    assert node.attrs["ferritin_record"]["digest"] == "v1"
    np.testing.assert_array_equal(node["chi"].values, _chi(1.0)["chi"].values)
    # the dead writer's lock is stale (its process is gone) and a re-run takes it over
    with store.lock("resume"):
        store.write_node("derived/sub-01/qsm", _chi(2.0), stage="qsm", digest="v2")
    node = store.open_node("derived/sub-01/qsm")
    assert node.attrs["ferritin_record"]["digest"] == "v2"
    np.testing.assert_array_equal(node["chi"].values, _chi(2.0)["chi"].values)


def test_a_second_run_is_refused_and_a_lost_lock_can_be_released(s3, tiny_bids, capsys):
    from ferritin.engine.cli import main

    url = "s3://cohorts/locked.zarr"
    store = CohortStore(url, create=True)
    holder = _writer(url, "hold")
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(StoreLocked, match=f"in use by another run \\(writer, pid {holder.pid}"):
            with store.lock("second"):
                pass
        capsys.readouterr()
        assert main(["ingest", str(tiny_bids[0]), url, "--no-progress", "--workers", "1"]) == 4
        assert "in use by another run (writer" in capsys.readouterr().err
    finally:
        holder.kill()
        holder.wait()
    # as if the holder had run on another machine: only a person can say it is gone
    store._release_lock()
    store._acquire_lock({"pid": 1, "host": "elsewhere", "purpose": "ingest", "started": "then"})
    with pytest.raises(StoreLocked, match=f"ferritin unlock {url}"):
        with store.lock("second"):
            pass
    capsys.readouterr()
    assert main(["unlock", url]) == 0
    assert "released the lock of ingest (pid 1 on elsewhere" in capsys.readouterr().out
    with store.lock("now free"):
        assert store.children("derived") == []


def test_object_store_errors_are_messages(s3, capsys):
    from ferritin.engine.cli import main

    assert main(["unlock", "s3://cohorts/nothing-here.zarr"]) == 2
    assert "no cohort store here" in capsys.readouterr().err
    assert main(["unlock", "gs://cohorts/study.zarr"]) == 2
    assert "local folder or at an s3:// URL" in capsys.readouterr().err


def test_group_level_on_s3_writes_its_files_beside_the_store(s3, client, tmp_path):
    """With a Dask client open, as in a notebook: the nodes' dask arrays are still written by this process."""
    import fsspec
    import pandas as pd
    from synthetic_group import PLANT_MM, write_group_store

    from ferritin import run_study

    out = "s3://cohorts/group-study"
    subjects, spec = write_group_store(CohortStore(f"{out}/cohort.zarr", create=True), n_per_group=5)
    spec["inference"].update(permutations=0, tfce=False)
    res = run_study(tmp_path / "unused-bids", out, spec, levels=("group",))
    assert res.report == f"{out}/report.html"
    fs = fsspec.filesystem("s3")
    assert fs.exists("cohorts/group-study/report.html") and fs.exists("cohorts/group-study/spec.yaml")
    with fs.open("cohorts/group-study/tables/roi_sources.csv") as f:
        rois = pd.read_csv(f)
    peak = rois.set_index("roi").loc["chi_als_gt_nc_thalamus_L", ["x", "y", "z"]].to_numpy(float)
    assert np.linalg.norm(peak - PLANT_MM) <= 10
    store = CohortStore(f"{out}/cohort.zarr")
    assert store.exists("stats/chi_als_gt_nc") and "ferritin_lock" not in store.open_tree().attrs
    assert set(res.group.subjects) == set(subjects[:-1])  # the last one fails QC
