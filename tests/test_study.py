"""run_study: the one ingest → participant → group sequence, and its argument checks."""

import pytest

from ferritin import run_study
from ferritin.engine.study import store_path


def test_levels_are_checked(tmp_path):
    with pytest.raises(ValueError, match="levels must be some of"):
        run_study(tmp_path, tmp_path / "out", {}, levels=("groups",))
    with pytest.raises(ValueError, match="levels must be some of"):
        run_study(tmp_path, tmp_path / "out", {}, levels=())


def test_participant_level_needs_a_client(tmp_path):
    with pytest.raises(ValueError, match="needs a Dask client"):
        run_study(tmp_path, tmp_path / "out", {}, levels=("participant",))
    assert not (tmp_path / "out").exists()  # refused before anything was created


def test_store_lives_in_the_output_folder(tmp_path):
    assert store_path(tmp_path / "out") == tmp_path / "out" / "cohort.zarr"
