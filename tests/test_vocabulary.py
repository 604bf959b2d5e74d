"""participants.tsv read as meant or refused: the sex vocabulary, one spelling per level, plausible ages."""

import pytest

from ferritin.cohort.bids import discover, read_participants
from ferritin.cohort.errors import DatasetError
from ferritin.cohort.layout import participants_dataset


def _tsv(root, rows, header="participant_id\tgroup\tage\tsex"):
    (root / "participants.tsv").write_text(header + "\n" + "\n".join("\t".join(r) for r in rows) + "\n")


def test_the_usual_spellings_of_sex_are_read_as_m_and_f_with_a_note(tmp_path):
    _tsv(tmp_path, [("sub-01", "ALS", "50", "M"), ("sub-02", "ALS", "51", "m"), ("sub-03", "NC", "52", "female"),
                    ("sub-04", "NC", "53", " Male "), ("sub-05", "NC", "54", "F")])
    table, _, problems = read_participants(tmp_path)
    assert not problems
    assert table["sex"].to_dict() == {"sub-01": "M", "sub-02": "M", "sub-03": "F", "sub-04": "M", "sub-05": "F"}
    notes = table.attrs["notes"]
    assert any("'m' read as 'M' (row 3)" in n for n in notes)
    assert any("'female' read as 'F' (row 4)" in n for n in notes)
    assert not any("'M' read" in n or "'F' read" in n for n in notes)  # what was written as meant has no note


@pytest.mark.parametrize("value", ["1", "2", "X", "unknown"])
def test_a_sex_that_cannot_be_read_is_refused_by_its_row(tmp_path, value):
    _tsv(tmp_path, [("sub-01", "ALS", "50", "M"), ("sub-02", "NC", "51", value)])
    table, _, problems = read_participants(tmp_path)
    assert list(table.index) == ["sub-01"]
    (problem,) = problems
    assert problem.subject == "sub-02" and "row 3" in problem.message and repr(value) in problem.message
    assert "M or F" in problem.message


def test_two_spellings_of_one_group_are_refused_naming_them(tmp_path):
    _tsv(tmp_path, [("sub-01", "ALS", "50", "M"), ("sub-02", "als", "51", "F"), ("sub-03", "NC", "52", "F")])
    with pytest.raises(DatasetError, match=r"column 'group': 'ALS' and 'als' differ only in case or spacing "
                                           r"\(rows 2, 3\)"):
        read_participants(tmp_path)


def test_spacing_inside_a_level_counts_as_the_same_level(tmp_path):
    _tsv(tmp_path, [("sub-01", "NC", "50", "M", "Site  A"), ("sub-02", "NC", "51", "F", "site a")],
         header="participant_id\tgroup\tage\tsex\tsite")
    with pytest.raises(DatasetError, match="column 'site'"):
        read_participants(tmp_path)


@pytest.mark.parametrize("age", ["-5", "200", "121"])
def test_an_implausible_age_is_refused_by_its_row(tmp_path, age):
    _tsv(tmp_path, [("sub-01", "ALS", "50", "M"), ("sub-02", "NC", age, "F")])
    table, _, problems = read_participants(tmp_path)
    assert list(table.index) == ["sub-01"]
    (problem,) = problems
    assert problem.subject == "sub-02" and "row 3" in problem.message and "outside 0-120" in problem.message


def test_ages_at_the_ends_of_the_range_are_kept(tmp_path):
    _tsv(tmp_path, [("sub-01", "ALS", "0", "M"), ("sub-02", "NC", "120", "F")])
    table, _, problems = read_participants(tmp_path)
    assert not problems and len(table) == 2


def test_the_notes_reach_the_dataset_and_the_store_node(bids_factory):
    f = bids_factory
    f.subject("sub-01")
    (f.root / "participants.tsv").write_text("participant_id\tgroup\tsex\nsub-01\tALS\tmale\n")
    dataset = discover(f.root)
    assert dataset.notes == ["participants.tsv, column 'sex': 'male' read as 'M' (row 2)"]
    assert participants_dataset(dataset.participants).attrs["notes"] == dataset.notes
