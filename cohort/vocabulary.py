"""What the columns of participants.tsv may say: the sex vocabulary, one spelling per level, plausible ages.

A text column becomes a factor of the group model level by level: ``M``, ``m``
and ``male`` would be three sexes, and ``ALS`` and ``als`` two groups, with no
word.  The sex column has a documented vocabulary, read case-insensitively and
mapped to BIDS's ``M``/``F``/``O`` with a note that says what was read as what;
a value outside it (numeric codes such as ``1``/``2`` mean male in one
convention and female in another) is refused by its row.  In every other text
column, two values that differ only in case or spacing are refused: which
spelling is right is the user's to say.  Numeric columns with a known meaning
are checked against a plausible range.
"""

from __future__ import annotations

from collections import defaultdict

import pandas as pd

from .errors import DatasetError, Problem

__all__ = ["SEX_VOCABULARY", "SEX_COLUMNS", "PLAUSIBLE_RANGES", "check_categories", "check_ranges"]

#: every spelling of the sex column that is read, case-insensitively, and the BIDS value it becomes
SEX_VOCABULARY = {"m": "M", "male": "M", "man": "M", "f": "F", "female": "F", "woman": "F",
                  "o": "O", "other": "O"}
#: columns read with :data:`SEX_VOCABULARY` (BIDS names the column ``sex``; some tables say ``gender``)
SEX_COLUMNS = ("sex", "gender")
#: numeric columns whose meaning bounds their values: (lowest, highest) accepted
PLAUSIBLE_RANGES = {"age": (0.0, 120.0)}


def _key(value) -> str:
    """A value with case and runs of spaces folded: two spellings of one level share it."""
    return " ".join(str(value).split()).casefold()


def _rows(subjects, row_of: dict) -> str:
    rows = sorted(row_of[s] for s in subjects)
    shown = ", ".join(str(r) for r in rows[:6]) + (", ..." if len(rows) > 6 else "")
    return f"row{'s' if len(rows) > 1 else ''} {shown}"


def check_categories(table: pd.DataFrame, row_of: dict) -> tuple[pd.DataFrame, list[Problem], list[str]]:
    """The sex column mapped to M/F/O, every other text column checked for one spelling per level.

    Parameters
    ----------
    table : DataFrame indexed by subject; numeric columns already converted.
    row_of : the participants.tsv row number of each subject.

    Returns
    -------
    table, problems, notes
        The table with the sex column mapped and the subjects whose sex could
        not be read removed; a problem per such subject naming its row; notes
        saying which spellings were read as which value.

    Raises
    ------
    DatasetError
        When a text column holds two spellings of one level (``ALS`` and
        ``als``): the model would take them for two levels.
    """
    out = table.copy()
    problems: list[Problem] = []
    notes: list[str] = []
    unreadable: set = set()
    for column in table.columns:
        values = table[column].dropna()
        if values.empty or pd.api.types.is_numeric_dtype(table[column]):
            continue
        if str(column).lower() in SEX_COLUMNS:
            mapped, read_as = _map_sex(values)
            for subject in values.index.difference(mapped.index):
                problems.append(Problem(subject, "participants.tsv", (
                    f"row {row_of[subject]}, column {column!r}: {_short(values[subject])} is not a sex this table "
                    f"can read; write M or F (also read: {', '.join(sorted(SEX_VOCABULARY))}, any case). Numeric "
                    f"codes such as 1/2 mean male in one convention and female in another")))
                unreadable.add(subject)
            out[column] = table[column].astype(object)
            out.loc[mapped.index, column] = mapped
            for (given, value), subjects in sorted(read_as.items()):
                notes.append(f"participants.tsv, column {column!r}: {given!r} read as {value!r} "
                             f"({_rows(subjects, row_of)})")
            continue
        spellings = defaultdict(set)
        for value in values:
            spellings[_key(value)].add(str(value))
        clashes = [sorted(s) for s in spellings.values() if len(s) > 1]
        if clashes:
            first = clashes[0]
            where = values[values.astype(str).isin(first)].index
            raise DatasetError(f"participants.tsv, column {column!r}: {' and '.join(map(repr, first))} differ only "
                               f"in case or spacing ({_rows(where, row_of)}); the model would take them for "
                               f"different levels: write each level one way")
    return out.drop(index=sorted(unreadable)), problems, notes


def _map_sex(values: pd.Series) -> tuple[pd.Series, dict]:
    """The readable values as M/F/O, and which given spelling was read as which value, by subject."""
    mapped = {}
    read_as = defaultdict(list)
    for subject, value in values.items():
        code = SEX_VOCABULARY.get(_key(value))
        if code is None:
            continue
        mapped[subject] = code
        if str(value) != code:
            read_as[(str(value), code)].append(subject)
    return pd.Series(mapped, dtype=object), dict(read_as)


def check_ranges(table: pd.DataFrame, row_of: dict) -> tuple[pd.DataFrame, list[Problem]]:
    """Refuse a subject whose age (or another bounded column) lies outside its plausible range, naming the row."""
    problems, bad = [], set()
    for column in table.columns:
        bounds = PLAUSIBLE_RANGES.get(str(column).lower())
        if bounds is None or not pd.api.types.is_numeric_dtype(table[column]):
            continue
        lo, hi = bounds
        values = table[column].dropna()
        for subject, value in values[(values < lo) | (values > hi)].items():
            problems.append(Problem(subject, "participants.tsv", f"row {row_of[subject]}, column {column!r}: "
                                                                 f"{value:g} is outside {lo:g}-{hi:g}"))
            bad.add(subject)
    return table.drop(index=sorted(bad)), problems


def _short(value, width: int = 40) -> str:
    text = repr(str(value))
    return text if len(text) <= width else text[: width - 4] + "...'"
