"""The spec checked against the cohort before any work: groups, covariates and clinical columns."""

import pandas as pd
import pytest

from ferritin.engine.cli import main
from ferritin.engine.preflight import check_spec_against_participants
from ferritin.engine.spec import SpecError, load_spec


def _table(**columns):
    base = {"group": ["ALS", "NC"], "age": [50.0, 60.0], "sex": ["M", "F"], "alsfrs_r": [40.0, None],
            "umn": [3.0, None], "dd": [12.0, None], "dpr": [0.7, None]}
    base.update(columns)
    return pd.DataFrame({k: v for k, v in base.items() if v is not None}, index=["sub-01", "sub-02"])


def test_the_reference_spec_fits_a_table_with_its_columns():
    check_spec_against_participants(load_spec(), _table(), "participants.tsv")


@pytest.mark.parametrize("change, message", [
    ({"group": ["ALS", "control"]}, "groups: 'NC' is not a group of participants.tsv (groups there: ALS, control)"),
    ({"dpr": None}, "clinical.scores: 'dpr' is not a column of participants.tsv"),
    ({"age": None}, "covariates: 'age' is not a column"),
    ({"group": None}, "has no 'group' column"),
])
def test_what_the_table_cannot_give_is_named_with_its_key(change, message):
    with pytest.raises(SpecError, match="does not fit the cohort") as err:
        check_spec_against_participants(load_spec(), _table(**change), "participants.tsv")
    assert message in str(err.value)


def test_spec_check_with_a_dataset(tmp_path, capsys):
    bids = tmp_path / "bids"
    bids.mkdir()
    (bids / "participants.tsv").write_text("participant_id\tgroup\tage\tsex\nsub-01\tALS\t50\tM\nsub-02\tNC\t60\tF\n")
    spec = tmp_path / "study.yaml"
    spec.write_text("name: x\n")
    assert main(["spec", "--check", str(spec), str(bids)]) == 2
    err = capsys.readouterr().err
    assert "clinical.scores: 'alsfrs_r' is not a column of participants.tsv" in err and err.count("\n") == 1
    spec.write_text("clinical:\n  scores: []\n  partial_covariates: []\n  expected_sign: {}\n")
    assert main(["spec", "--check", str(spec), str(bids)]) == 0
