"""The study spec: a typed tree of frozen dataclasses, one source of defaults, checked when read."""

import dataclasses

import pytest
import yaml

from ferritin.engine.anat import AnatParams
from ferritin.engine.qc import QCCriteria
from ferritin.engine.qsm.chain import QSMParams
from ferritin.engine.spec import (
    Contrast,
    Inference,
    SmallVolume,
    SpecError,
    StudySpec,
    complete_spec,
    default_spec,
    load_spec,
)


def test_a_partial_dict_gets_the_shipped_defaults():
    """A Python caller's partial spec runs the analysis the command line runs (no code-level fallbacks)."""
    spec = complete_spec({"inference": {"height_p": 0.01}})
    shipped = default_spec()
    assert isinstance(spec, StudySpec) and spec.inference.height_p == 0.01
    for key in ("extent_voxels", "tfce", "permutations", "svc_alpha"):
        assert getattr(spec.inference, key) == shipped["inference"][key]
    assert spec.qsm.mask_source == "t1" and spec.study_template is False


def test_completing_is_idempotent_and_matches_the_file_route(tmp_path):
    user = {"groups": ["PD", "HC"], "clinical": {"patient_group": "PD"}, "mni_voxel_size": 3}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(user))
    once = complete_spec(user)
    assert complete_spec(once) is once
    assert once == load_spec(tmp_path / "s.yaml") == complete_spec(once.to_dict())
    assert once.groups == ("PD", "HC") and once.mni_voxel_size == 3.0


def test_the_tree_is_typed_and_frozen():
    spec = load_spec()
    assert isinstance(spec.qsm, QSMParams) and isinstance(spec.anat, AnatParams) and isinstance(spec.qc, QCCriteria)
    assert isinstance(spec.inference, Inference) and all(isinstance(c, Contrast) for c in spec.contrasts)
    assert all(isinstance(s, SmallVolume) for s in spec.svc)
    assert isinstance(spec.anat.syn_iterations, tuple)
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.mni_voxel_size = 3.0
    # a changed copy is checked again
    assert dataclasses.replace(spec, mni_voxel_size=3.0).mni_voxel_size == 3.0
    with pytest.raises(ValueError, match="mni_voxel_size"):
        dataclasses.replace(spec, mni_voxel_size=-1.0)


def test_the_yaml_is_the_only_source_of_the_values_it_shows():
    """Where the shipped YAML restates a stage class's default, the two agree: one value per key."""
    shipped = default_spec()
    classes = {"qsm": QSMParams(), "anat": AnatParams(), "qc": QCCriteria()}
    for section, defaults in classes.items():
        for key, value in shipped[section].items():
            if key == "study_template":
                continue
            expected = getattr(defaults, key)
            assert (list(expected) if isinstance(expected, tuple) else expected) == value, f"{section}.{key}"


def test_parameter_classes_check_their_own_choices():
    with pytest.raises(ValueError, match="inversion must be one of"):
        QSMParams(inversion="medi")
    with pytest.raises(ValueError, match="normalise_on must be one of"):
        AnatParams(normalise_on="t2")
    with pytest.raises(ValueError, match="map must be one of chi, r2star, gm_mod_s"):
        Contrast("x", "t2", "A - B")
    with pytest.raises(ValueError, match="permutations"):
        Inference(0.005, 100, 0.05, 1, 0, False)
    with pytest.raises(ValueError, match="region"):
        SmallVolume("nowhere")


@pytest.mark.parametrize("user, message", [
    ({"inference": {"heigth_p": 0.01}}, r"inference.heigth_p is not a spec key; the keys of inference are .*height_p"),
    ({"groups": ["PD", "HC"]}, "patient_group 'ALS' is not one of the groups"),
    ({"roi": {"from_contrasts": ["chi_up"]}}, r"roi.from_contrasts names 'chi_up'"),
    ({"roi": {"regions": [{"name": "r", "centre": [0, 0, 0]}]}}, r"roi.regions\[0\].centre is not a spec key"),
    ({"clinical": {"chi_vs_gm": "down"}}, r"clinical.chi_vs_gm must be one of positive, negative"),
    ({"clinical": {"expected_sign": {"chi": {"umn": "up"}}}}, r"expected_sign.chi.umn must be one of"),
    ({"clinical": {"scores": "alsfrs_r"}}, r"clinical.scores must be a list of strings"),
    ({"inference": {"tfce": "yes"}}, r"inference.tfce must be true or false"),
    ({"inference": {"permutations": 10.5}}, r"inference.permutations must be an integer"),
    ({"svc": [{"name": "s", "region": "Thalamus_L", "centre_mm": [1, 2]}]}, r"svc\[0\].centre_mm must be three"),
    ({"contrasts": [{"name": "c", "map": "chi"}]}, r"contrasts\[0\].weights is missing"),
    ({"groups": ["ALS", "ALS"]}, "each named once"),
])
def test_a_partial_dict_is_checked_like_a_file(user, message):
    with pytest.raises(SpecError, match=message):
        complete_spec(user)


def test_a_spec_that_is_not_a_mapping_is_refused():
    with pytest.raises(SpecError, match="must be a mapping"):
        complete_spec(["groups"])


def test_the_spec_reference_in_docs_is_the_generated_one():
    """docs/spec-reference.md is written by ``ferritin spec --reference``: regenerate it when a key changes."""
    from pathlib import Path

    from ferritin.engine.spec_reference import spec_reference

    doc = Path(__file__).resolve().parents[1] / "docs" / "spec-reference.md"
    assert doc.read_text().rstrip("\n") == spec_reference().rstrip("\n"), "run: ferritin spec --reference > " + str(doc)
    for key in ("height_p", "mask_source", "normalise_on", "min_tiv_ml", "centre_mm", "expected_sign"):
        assert f"`{key}`" in doc.read_text()


def test_a_message_about_a_whole_entry_names_the_entry():
    with pytest.raises(SpecError, match=r"^svc\[0\]: needs a 'region'"):
        complete_spec({"svc": [{"name": "s"}]})
    with pytest.raises(SpecError, match=r"^svc\[0\]\.radius_mm must be positive"):
        complete_spec({"svc": [{"name": "s", "region": "Thalamus_L", "radius_mm": -1}]})


def test_qc_reasons_show_the_value_beyond_the_limit():
    from ferritin.engine.qc import qc_failures

    # a GM share just over the limit must not read "0.54 > 0.54"
    reasons = qc_failures({"gm_ml": 0.5412 * 1500.0, "tiv_ml": 1500.0}, QCCriteria(max_gm_fraction=0.54))
    assert reasons == ["GM share of TIV 0.541 > 0.54"]
    assert qc_failures({"gm_ml": 0.5399 * 1500.0, "tiv_ml": 1500.0}, QCCriteria(max_gm_fraction=0.54)) == []


def _check(tmp_path, text: str):
    path = tmp_path / "study.yaml"
    path.write_text(text)
    from ferritin.engine.spec import load_spec

    return load_spec(path)


def test_a_key_given_twice_is_refused_with_both_lines(tmp_path):
    from ferritin.engine.spec import SpecError

    with pytest.raises(SpecError, match=r"line 3: key 'name' appears twice in one mapping \(first on line 1\)"):
        _check(tmp_path, "name: a\nmni_voxel_size: 3\nname: b\n")


def test_an_alias_bomb_is_refused_before_it_expands(tmp_path):
    from ferritin.engine.spec import SpecError

    levels = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for n, (name, prev) in enumerate(zip("bcdefghij", "abcdefghi")):
        levels.append(f"x{n}: &{name} [{','.join(['*' + prev] * 9)}]")
    with pytest.raises(SpecError, match="more than 16 aliases"):
        _check(tmp_path, "\n".join(levels) + "\nname: *j\n")


def test_an_exponent_without_a_dot_is_a_number(tmp_path):
    spec = _check(tmp_path, "inference:\n  height_p: 1e-3\n")
    assert spec.inference.height_p == 0.001


def test_a_long_value_is_shown_cut_short(tmp_path):
    from ferritin.engine.spec import SpecError

    with pytest.raises(SpecError) as err:
        _check(tmp_path, f"name: [{', '.join(str(i) for i in range(500))}]\n")
    assert "name must be a string" in str(err.value) and len(str(err.value)) < 140


@pytest.mark.parametrize("name", ["a/b", "../../x", ".hidden", "a b"])
def test_a_contrast_name_that_is_not_store_safe_is_refused(tmp_path, name):
    from ferritin.engine.spec import SpecError

    with pytest.raises(SpecError, match=r"contrasts\[0\]\.name .* names the contrast's store node"):
        _check(tmp_path, f'contrasts:\n  - name: "{name}"\n    map: chi\n    weights: "ALS - NC"\n')


def test_a_region_that_is_not_in_the_atlas_is_refused_with_the_nearest_names(tmp_path):
    from ferritin.engine.spec import SpecError

    with pytest.raises(SpecError, match=r"svc\[0\]\.region 'Thalamus_l' is not a region of the atlas; did you mean "
                                        r"Thalamus_L"):
        _check(tmp_path, "svc:\n  - name: s\n    region: Thalamus_l\n")
    with pytest.raises(SpecError, match="'Nowhere' is not a region of the atlas"):
        _check(tmp_path, "roi:\n  regions:\n    - name: s\n      region: Nowhere\n")


@pytest.mark.parametrize("text, match", [
    ("qc:\n  min_gm_correlation: 1.2\n", "min_gm_correlation must lie in"),
    ("qc:\n  max_brain_top_gap_mm: 0\n", "max_brain_top_gap_mm positive"),
    ("anat:\n  vbm_fwhm_mm: .nan\n", "vbm_fwhm_mm must be a finite number"),
    ("anat:\n  vbm_fwhm_mm: -4\n", "vbm_fwhm_mm must be >= 0"),
    ("anat:\n  search_degrees: 0\n", "search_degrees must lie in"),
    ("inference:\n  permutations: .inf\n", "permutations"),
])
def test_numbers_no_subject_could_meet_or_no_run_could_use_are_refused(tmp_path, text, match):
    from ferritin.engine.spec import SpecError

    with pytest.raises(SpecError, match=match):
        _check(tmp_path, text)
