"""The pieces a report section is made of, as data for the page template.

A section is a title and a list of blocks (text, finding, table, figure);
``templates/report.html.j2`` turns them into HTML, escaping every string, so
nothing here writes markup.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

__all__ = ["Block", "Section", "Table", "Figure", "text", "finding", "heading", "empty", "table", "figure",
           "format_value"]


@dataclass(frozen=True)
class Block:
    """A piece of text: ``kind`` is ``"text"``, ``"finding"``, ``"heading"``, ``"empty"`` or ``"pre"``."""

    kind: str
    text: str
    label: str = ""  # a finding's subject, shown in bold before the text


@dataclass(frozen=True)
class Table:
    caption: str
    columns: list
    rows: list  # formatted cells
    more: int = 0  # rows left out (they are in ``source``)
    source: str = ""
    kind: str = "table"

    @property
    def empty(self) -> bool:
        return not self.rows


@dataclass(frozen=True)
class Figure:
    png_base64: str
    caption: str
    kind: str = "figure"


@dataclass
class Section:
    anchor: str
    title: str
    blocks: list = field(default_factory=list)


def text(s: str) -> Block:
    return Block("text", s)


def finding(label: str, s: str) -> Block:
    return Block("finding", s, label)


def heading(s: str) -> Block:
    return Block("heading", s)


def empty(s: str) -> Block:
    return Block("empty", s)


def figure(png: bytes, caption: str) -> Figure:
    return Figure(base64.b64encode(png).decode(), caption)


def format_value(v) -> str:
    """A table cell: three significant decimals, scientific notation for the very small and large."""
    if isinstance(v, (float, np.floating)):
        if not np.isfinite(v):
            return "" if np.isnan(v) else ("∞" if v > 0 else "−∞")
        a = abs(v)
        if a != 0 and (a < 1e-3 or a >= 1e5):
            return f"{v:.2e}"
        return f"{v:.3f}" if a < 10 else f"{v:.1f}"
    return str(v)


def _whole(col: pd.Series) -> bool:
    """A numeric column of counts (whole numbers, NaN allowed) is shown without decimals."""
    v = pd.to_numeric(col, errors="coerce")
    v = v[np.isfinite(v)] if v.dtype.kind == "f" else v.dropna()
    return col.dtype.kind in "if" and len(v) > 0 and bool((v == np.round(v)).all()) and bool((v.abs() < 1e6).all())


def table(df: pd.DataFrame | None, caption: str = "", max_rows: int | None = None, source: str = "") -> Table:
    """A data frame as formatted rows (at most ``max_rows``; the rest are counted and pointed to ``source``)."""
    if df is None or not len(df):
        return Table(caption, [], [])
    more = 0
    if max_rows is not None and len(df) > max_rows:
        more, df = len(df) - max_rows, df.iloc[:max_rows]
    counts = {c for c in df.columns if _whole(df[c])}
    rows = [[str(int(v)) if c in counts and np.isfinite(v) else format_value(v) for c, v in zip(df.columns, row)]
            for row in df.itertuples(index=False)]
    return Table(caption, [str(c) for c in df.columns], rows, more, source)
