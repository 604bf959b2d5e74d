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
