"""ferritin's user errors: each names what is wrong and where (subject, file, row or key).

Every problem a researcher can fix is a :class:`FerritinError`; the command
line's ``main`` alone turns one into a one-line message and exit 2, so that
anything else (a bug) stays a traceback with exit 1 and is reported as one.
A problem with one subject's data is a :class:`SubjectError` (one subject, one
file, one reason) so that a batch can record it, exclude that subject and
carry on with the rest of the cohort.

The kinds: :class:`SubjectError`, :class:`DatasetError` (the dataset as a
whole), ``SpecError`` (the study spec, :mod:`ferritin.engine.spec`),
``StoreError`` and ``NoStoreError`` (the cohort store), :class:`OutputError`,
:class:`ClusterConnectionError`, :class:`CredentialsError` (object storage),
:class:`GroupLevelError` (a cohort the group model cannot be fitted to),
:class:`SimulationSpecError` and ``ConversionError`` (DICOM).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Problem:
    """One validation problem: who, where and what.

    Parameters
    ----------
    subject : str or None
        BIDS subject (``"sub-01"``), or None for dataset-level problems.
    path : str or None
        The file (relative to the dataset root when possible).
    message : str
        What is wrong, in words a researcher can act on.
    """

    subject: str | None
    path: str | None
    message: str

    def __str__(self) -> str:
        where = ": ".join(p for p in (self.subject, self.path) if p)
        return f"{where}: {self.message}" if where else self.message


class FerritinError(Exception):
    """Base class of ferritin's own errors."""


class SubjectError(FerritinError):
    """A problem with one subject's data; the cohort goes on without it."""

    def __init__(self, subject: str | None, path: str | Path | None, message: str):
        self.problem = Problem(subject, None if path is None else str(path), message)
        super().__init__(str(self.problem))

    @property
    def subject(self) -> str | None:
        return self.problem.subject

    @property
    def path(self) -> str | None:
        return self.problem.path


class DatasetError(FerritinError):
    """A problem with the dataset as a whole (e.g. no participants.tsv)."""

    def __init__(self, problems: list[Problem] | str):
        if isinstance(problems, str):
            problems = [Problem(None, None, problems)]
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class OutputError(FerritinError, FileNotFoundError):
    """An output folder that cannot be created or written (under a file, on a read-only or virtual file system),
    or that lacks what a command reads from it."""


class ClusterConnectionError(FerritinError):
    """A Dask scheduler address that is not one, or a scheduler that does not answer."""


class CredentialsError(FerritinError):
    """Object storage that refuses the request: no credentials, or credentials it does not accept."""


class GroupLevelError(FerritinError, ValueError):
    """A cohort the group model cannot be fitted to (too few usable subjects, a covariate that is missing)."""


class SimulationSpecError(FerritinError, ValueError):
    """A simulation preset or planted-effects file that cannot be used."""
