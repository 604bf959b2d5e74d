"""A study spec checked against the cohort it will meet, before any work starts.

A spec that reads well on its own can still name a group that no participant
is in, a covariate or clinical score that participants.tsv does not have, or
QC limits that leave nobody; the run would refuse it hours later at the group
level, or quietly leave the score out.  ``ferritin spec --check study.yaml
BIDS_DIR`` and ``ferritin run`` check it here first.
"""

from __future__ import annotations

import pandas as pd

from .spec import SpecError, StudySpec

__all__ = ["check_spec_against_participants", "check_spec_against_dataset", "MEASURED_COLUMNS"]

#: columns the pipeline measures itself: participants.tsv need not have them
MEASURED_COLUMNS = ("tiv",)


def check_spec_against_participants(spec: StudySpec, participants: pd.DataFrame, source: str) -> None:
    """Refuse a spec whose groups, covariates or clinical columns the participants table cannot give.

    Parameters
    ----------
    spec : the study spec.
    participants : participants.tsv as read (indexed by subject).
    source : where the table came from, for the message.

    Raises
    ------
    SpecError
        Listing every mismatch, each with the spec key and what the table has.
    """
    problems = []
    columns = set(map(str, participants.columns))
    shown = ", ".join(sorted(columns)) or "none"
    if "group" not in columns:
        problems.append(f"{source} has no 'group' column (columns: {shown})")
    else:
        present = set(participants["group"].dropna().astype(str))
        for g in spec.groups:
            if g not in present:
                problems.append(f"groups: {g!r} is not a group of {source} (groups there: "
                                f"{', '.join(sorted(present)) or 'none'})")
    wanted = [("covariates", c) for c in spec.covariates]
    wanted += [("clinical.scores", c) for c in spec.clinical.scores]
    wanted += [("clinical.partial_covariates", c) for c in spec.clinical.partial_covariates]
    wanted += [("clinical.roi_covariates", c) for c in spec.clinical.roi_covariates]
    for key, column in wanted:
        if column not in columns and column not in MEASURED_COLUMNS:
            problems.append(f"{key}: {column!r} is not a column of {source} (columns: {shown})")
    if problems:
        raise SpecError("the study spec does not fit the cohort: " + "; ".join(problems))


def check_spec_against_dataset(spec: StudySpec, bids_dir) -> None:
    """:func:`check_spec_against_participants` with the participants.tsv of a BIDS dataset."""
    from ferritin.cohort.bids import read_participants

    table, _, _ = read_participants(bids_dir)
    check_spec_against_participants(spec, table, "participants.tsv")
