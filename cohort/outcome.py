"""What a per-subject task reports: its status, the subject and why it failed.

Every per-subject task (ingest, anatomy, QSM, the study template, export)
returns an :class:`Outcome`; the progress bar, the run summary and the store's
failure log read it.  It unpacks like the ``(status, subject, reason)`` tuple
it replaces, and its status compares equal to the plain words.
"""

from __future__ import annotations

from enum import StrEnum
from typing import NamedTuple

__all__ = ["Status", "Outcome", "written", "skipped", "failed"]


class Status(StrEnum):
    WRITTEN = "written"  # computed and stored
    SKIPPED = "skipped"  # stored already, from the same inputs and parameters
    FAILED = "failed"  # not computed: ``reason`` says why


class Outcome(NamedTuple):
    status: Status
    subject: str
    reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.status != Status.FAILED


def written(subject: str) -> Outcome:
    return Outcome(Status.WRITTEN, subject)


def skipped(subject: str) -> Outcome:
    return Outcome(Status.SKIPPED, subject)


def failed(subject: str, reason: str) -> Outcome:
    return Outcome(Status.FAILED, subject, reason)
