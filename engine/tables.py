"""Result tables as CSV files that are safe to open in a spreadsheet.

Labels, group names and free text come from the user's participants.tsv; a
value such as ``=HYPERLINK(...)`` or ``+cmd|...`` written raw into a CSV is run
as a formula by spreadsheet programs (CSV injection).  As OWASP recommends, a
text cell that starts with ``=``, ``+``, ``-``, ``@``, a tab or a carriage
return is written with a leading single quote; numbers are written as numbers.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

__all__ = ["neutralise_formulas", "write_csv"]

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _safe(value):
    if isinstance(value, str) and value.startswith(_FORMULA_START) and not _is_number(value):
        return "'" + value
    return value


def neutralise_formulas(table: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``table`` whose text cells (and text index and column names) cannot start a formula."""
    out = table.copy()
    for column in out.columns:
        if out[column].dtype == object or pd.api.types.is_string_dtype(out[column]):
            out[column] = out[column].map(_safe)
    out.columns = [_safe(c) for c in out.columns]
    if out.index.dtype == object or pd.api.types.is_string_dtype(out.index):
        out.index = out.index.map(_safe)
    return out


def write_csv(table: pd.DataFrame, path: str | Path, **kwargs) -> None:
    """``table.to_csv(path, **kwargs)`` with formula-starting text neutralised."""
    neutralise_formulas(table).to_csv(path, **kwargs)
