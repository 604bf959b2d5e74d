"""Result tables cannot carry spreadsheet formulas from user text (CSV injection)."""

import pandas as pd

from ferritin.engine.tables import neutralise_formulas, write_csv


def test_formula_text_is_quoted_and_numbers_are_not(tmp_path):
    table = pd.DataFrame({"group": ["=HYPERLINK(\"x\")", "+cmd|' /C calc'!A0", "@SUM(A1)", "-2+3", "ALS", "-0.5"],
                          "t": [-1.5, 2.0, 0.0, 3.0, -4.0, 1.0]})
    write_csv(table, tmp_path / "t.csv", index=False)
    back = pd.read_csv(tmp_path / "t.csv")
    assert back["group"].tolist() == ["'=HYPERLINK(\"x\")", "'+cmd|' /C calc'!A0", "'@SUM(A1)", "'-2+3", "ALS",
                                      "-0.5"]
    assert back["t"].tolist() == [-1.5, 2.0, 0.0, 3.0, -4.0, 1.0]
    assert neutralise_formulas(table.set_index("group")).index[0].startswith("'=")
    assert table["group"][0].startswith("=")  # the caller's table is not changed
