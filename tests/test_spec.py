"""The study spec has one source of defaults: the shipped YAML, for files and Python dicts alike."""

import pytest
import yaml

from ferritin.engine.spec import SpecError, complete_spec, default_spec, load_spec


def test_a_partial_dict_gets_the_shipped_defaults():
    """A Python caller's partial spec runs the analysis the command line runs (no code-level fallbacks)."""
    spec = complete_spec({"inference": {"height_p": 0.01}})
    shipped = default_spec()
    assert spec["inference"]["height_p"] == 0.01
    for key in ("extent_voxels", "tfce", "permutations", "svc_alpha"):
        assert spec["inference"][key] == shipped["inference"][key]
    assert spec["qsm"]["mask_source"] == "t1" and spec["anat"]["study_template"] is False


def test_completing_is_idempotent_and_matches_the_file_route(tmp_path):
    user = {"groups": ["PD", "HC"], "clinical": {"patient_group": "PD"}, "mni_voxel_size": 3}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(user))
    once = complete_spec(user)
    assert complete_spec(once) == once == load_spec(tmp_path / "s.yaml")


def test_a_partial_dict_is_checked_like_a_file():
    with pytest.raises(SpecError, match=r"inference.heigth_p is not a spec key"):
        complete_spec({"inference": {"heigth_p": 0.01}})
    with pytest.raises(SpecError, match="patient_group 'ALS' is not one of the groups"):
        complete_spec({"groups": ["PD", "HC"]})
    with pytest.raises(SpecError, match="must be a mapping"):
        complete_spec(["groups"])
