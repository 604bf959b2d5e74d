import subprocess
import sys

import pytest

from ferritin.engine.cli import main


def test_help_names_every_command(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for cmd in ("simulate", "ingest", "run", "report", "demo"):
        assert cmd in out


@pytest.mark.parametrize("cmd", ["simulate", "ingest", "run", "demo"])
def test_subcommand_help(cmd, capsys):
    with pytest.raises(SystemExit):
        main([cmd, "--help"])
    assert "--scheduler" in capsys.readouterr().out


def test_console_script_installed():
    out = subprocess.run([sys.executable, "-m", "ferritin.engine.cli", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and "ferritin" in out.stdout


@pytest.mark.slow
def test_ingest_cli_end_to_end(tiny_bids, tmp_path, capsys):
    root, table = tiny_bids
    store = tmp_path / "c.zarr"
    rc = main(["ingest", str(root), str(store), "--workers", "1", "--no-progress", "--participant-label",
               table.participant_id[0]])
    out = capsys.readouterr().out
    assert rc == 0 and "ingested 1" in out
    rc = main(["ingest", str(tmp_path / "nope"), str(store), "--workers", "1", "--no-progress"])
    assert rc == 2 and "not a directory" in capsys.readouterr().err


def test_simulate_refuses_non_empty_output(tmp_path, capsys):
    (tmp_path / "x").write_text("")
    assert main(["simulate", str(tmp_path), "--preset", "tiny"]) == 2
    assert "not empty" in capsys.readouterr().err
    assert main(["simulate", str(tmp_path / "new"), "--preset", "nope"]) == 2


@pytest.mark.slow
def test_simulate_goes_on_with_an_interrupted_simulation(tmp_path, capsys):
    out = tmp_path / "bids"
    args = ["simulate", str(out), "--preset", "tiny", "--subjects", "1", "--echoes", "2", "--workers", "1",
            "--no-progress"]
    assert main(args) == 0
    subs = sorted(p.name for p in out.glob("sub-*"))
    # stopped before the end: one subject finished, the other not, no participants table yet
    (out / "participants.tsv").unlink()
    (out / "derivatives" / "ground-truth" / subs[1] / f"{subs[1]}_simulation.json").unlink()
    kept = out / subs[0] / "anat" / f"{subs[0]}_T1w.nii.gz"
    mtime = kept.stat().st_mtime_ns
    assert main(args) == 0
    assert "unfinished simulation" in capsys.readouterr().out
    assert (out / "participants.tsv").exists() and kept.stat().st_mtime_ns == mtime
    assert main(args) == 2  # a finished one is never written over
    assert "not empty" in capsys.readouterr().err


def test_shuffle_lifecycle_warnings_are_chatter_but_errors_are_not():
    """distributed logs every P2P rechunk's start and end as a warning (72 in a 4 + 4 study at 1 mm)."""
    import logging

    from ferritin.engine.cli import DaskChatterFilter

    def record(name, level):
        return logging.LogRecord(name, level, __file__, 1, "message", None, None)

    quiet, loud = DaskChatterFilter(0), DaskChatterFilter(2)
    shuffle = "distributed.shuffle._scheduler_plugin"
    assert not quiet.filter(record(shuffle, logging.WARNING))
    assert quiet.filter(record(shuffle, logging.ERROR))
    assert loud.filter(record(shuffle, logging.WARNING))
    assert not quiet.filter(record("distributed.worker", logging.INFO))
    assert quiet.filter(record("distributed.worker", logging.WARNING))
    assert quiet.filter(record("ferritin.engine.pipeline", logging.WARNING))


@pytest.mark.slow
def test_dask_chatter_is_silent_unless_asked_for(tiny_bids, tmp_path):
    """distributed's sub-loggers carry levels of their own: without -vv the
    user sees the command's output, not the scheduler's connection log."""
    root, table = tiny_bids
    cmd = [sys.executable, "-m", "ferritin.engine.cli", "ingest", str(root), str(tmp_path / "c.zarr"), "--workers", "1",
           "--no-progress", "--participant-label", table.participant_id[0]]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "ingested 1" in out.stdout
    assert "INFO distributed" not in out.stderr
