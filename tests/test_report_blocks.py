"""The report's blocks and template: formatting of cells, row limits, and escaping of every string."""

import numpy as np
import pandas as pd

from ferritin.engine.report import _environment
from ferritin.engine.report.blocks import Section, figure, finding, format_value, table, text


def test_cells_are_formatted_for_reading():
    assert format_value(0.00012) == "1.20e-04" and format_value(3.14159) == "3.142" and format_value(123.45) == "123.5"
    assert format_value(np.nan) == "" and format_value(np.inf) == "∞" and format_value("ALS") == "ALS"
    t = table(pd.DataFrame({"voxels": [12.0, 3.0, np.nan], "T": [4.5, 3.25, 3.0]}), "clusters", max_rows=2,
              source="tables/x.csv")
    assert t.rows == [["12", "4.500"], ["3", "3.250"]] and t.more == 1  # counts without decimals
    assert table(pd.DataFrame(), "none").empty


def _render(sections, **kw):
    context = dict(study="s", n_used=1, n_excluded=0, generated="now", version="0", warnings=[], sections=sections)
    return _environment().get_template("report.html.j2").render(**{**context, **kw})


def test_every_string_is_escaped():
    """Subject labels, captions and spec values come from users' files: none may become markup."""
    evil = "<script>alert(1)</script>"
    page = _render([Section("a", evil, [text(evil), finding(evil, evil), table(pd.DataFrame({evil: [evil]}), evil),
                                        figure(b"\x89PNG", evil)])], warnings=[evil], study=evil)
    assert "<script>alert" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert page.count("<script>") == 1  # the page's own render check only


def test_page_lists_every_section_once():
    page = _render([Section("one", "First", [text("a")]), Section("two", "Second", [])])
    assert page.count('href="#one"') == 1 and page.count('<section id="two">') == 1
    assert 'id="render-check"' in page
