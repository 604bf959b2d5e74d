"""User errors end in a message and an exit code, never a traceback: unreadable files, foreign stores,
a store that cannot be created, and Ctrl-C in the middle of a run."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import zarr

from ferritin.cohort.errors import DatasetError
from ferritin.cohort.store import CohortStore, StoreError
from ferritin.engine.cli import main
from ferritin.engine.ingest import ingest


def test_unreadable_participants_table_is_a_dataset_error(bids_factory, client, tmp_path, monkeypatch):
    f = bids_factory
    f.subject("sub-01")
    f.write_participants()
    real_read = Path.read_bytes

    def read_bytes(self):
        if self.name == "participants.tsv":
            raise PermissionError(13, "Permission denied", str(self))
        return real_read(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    with pytest.raises(DatasetError, match="participants.tsv: cannot be read: Permission denied"):
        ingest(f.root, tmp_path / "c.zarr", client, progress=False)
    assert not (tmp_path / "c.zarr").exists()


def test_a_zarr_store_that_is_not_ferritins_is_refused(bids_factory, tmp_path, capsys):
    f = bids_factory
    f.subject("sub-01")
    f.write_participants()
    other = tmp_path / "other.zarr"
    zarr.open_group(str(other), mode="w").attrs["owner"] = "another tool"
    assert main(["ingest", str(f.root), str(other), "--workers", "1", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "not a ferritin cohort store" in err and "Traceback" not in err
    assert zarr.open_group(str(other), mode="r").attrs["owner"] == "another tool"


def test_a_store_that_cannot_be_created_says_why(tmp_path, monkeypatch):
    def refuse(self):
        raise PermissionError(13, "Permission denied", str(self.path))

    monkeypatch.setattr(CohortStore, "_create", refuse)
    with pytest.raises(StoreError, match="cannot be created: Permission denied"):
        CohortStore(tmp_path / "read-only" / "c.zarr", create=True)


@pytest.mark.slow
def test_ctrl_c_ends_in_one_message_and_resumes(tmp_path):
    out = tmp_path / "bids"
    cmd = [sys.executable, "-m", "ferritin.engine.cli", "simulate", str(out), "--preset", "tiny", "--workers", "1",
           "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not any(out.glob("sub-*")) and time.monotonic() < deadline:  # until subjects are being written
        time.sleep(0.2)
    assert proc.poll() is None, "the simulation ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "interrupted" in err


@pytest.mark.parametrize("where", ["file", "proc"])
def test_an_output_folder_that_cannot_be_one_is_one_line_and_exit_2(tmp_path, capsys, where):
    out = tmp_path / "a-file" / "out" if where == "file" else Path("/proc/ferritin-output")
    (tmp_path / "a-file").write_text("")
    (tmp_path / "bids").mkdir()
    assert main(["run", str(tmp_path / "bids"), str(out), "group"]) == 2
    err = capsys.readouterr().err
    assert f"{out}: cannot be the output folder" in err and "Traceback" not in err
    if where == "file":
        assert "a-file is a file, not a folder" in err


def test_a_scheduler_address_that_is_not_one_is_named(tmp_path, capsys):
    (tmp_path / "bids").mkdir()
    assert main(["run", str(tmp_path / "bids"), str(tmp_path / "out"), "participant", "--scheduler", "notaurl"]) == 2
    err = capsys.readouterr().err
    assert "scheduler 'notaurl' is neither an address" in err and err.count("\n") == 1


@pytest.mark.slow
def test_a_scheduler_that_does_not_answer_is_one_line(tmp_path, capsys):
    (tmp_path / "bids").mkdir()
    code = main(["run", str(tmp_path / "bids"), str(tmp_path / "out"), "participant",
                 "--scheduler", "tcp://127.0.0.1:1"])
    err = capsys.readouterr().err
    assert code == 2 and "no Dask scheduler answered at tcp://127.0.0.1:1" in err and "Traceback" not in err


def test_a_reader_that_closes_the_pipe_ends_no_traceback():
    """`ferritin spec --reference | head -1`: the reader stops early; ferritin says nothing more."""
    proc = subprocess.run(f"{sys.executable} -m ferritin.engine.cli spec --reference | head -1", shell=True,
                          capture_output=True, text=True, timeout=120)
    assert proc.stdout.startswith("# Study spec reference") and "Traceback" not in proc.stderr


def test_publishing_without_credentials_says_so_in_one_line(tmp_path, capsys, monkeypatch):
    """No AWS credentials anywhere: botocore cannot sign the request; the user reads 'no credentials'."""
    pytest.importorskip("s3fs")
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    CohortStore(tmp_path / "c.zarr", create=True)
    code = main(["publish", str(tmp_path / "c.zarr"), "s3://no-such-bucket/c.zarr",
                 "--endpoint-url", "http://127.0.0.1:9"])
    err = capsys.readouterr().err
    assert code == 2 and "no credentials for the object store" in err and "Traceback" not in err
    assert err.count("\n") == 1


def test_an_object_store_url_without_a_bucket_is_named(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["run", str(tmp_path), "s3://", "group"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "'s3://' names no bucket: s3://BUCKET/path" in err and "s3:/" + "/cohort" not in err


ODD_OUTPUTS = ["{file}/out", "{file}", "/proc/ferritin-out", "/dev/null/out", "{tmp}/" + "x" * 300]
ODD_SCHEDULERS = ["notaurl", "tcp://", "tcp://host", "tcp://127.0.0.1:port", "ftp://127.0.0.1:1", ":8786",
                  "tcp//127.0.0.1:8786"]


@pytest.mark.parametrize("seed", range(12))
def test_odd_output_folders_and_scheduler_addresses_end_in_one_line(seed, tmp_path, capsys):
    """A seeded loop over kinds of output path and scheduler address a user may mistype: exit 2, one line."""
    import random

    rng = random.Random(seed)
    (tmp_path / "a-file").write_text("")
    (tmp_path / "bids").mkdir()
    if seed % 2:
        out = rng.choice(ODD_OUTPUTS).format(file=tmp_path / "a-file", tmp=tmp_path)
        argv = ["run", str(tmp_path / "bids"), out, "group"]
    else:
        argv = ["run", str(tmp_path / "bids"), str(tmp_path / "out"), "participant", "--scheduler",
                rng.choice(ODD_SCHEDULERS)]
    assert main(argv) == 2, argv
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
