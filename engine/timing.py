"""Wall time of a processing step and of its named parts: where a subject's time went."""

from __future__ import annotations

import time

__all__ = ["StepClock"]


class StepClock:
    """Laps of named steps since construction (or the previous lap), and the total.

    The stages keep these times with their outputs, so a user sees which step
    of which subject was slow without profiling anything.
    """

    def __init__(self):
        self.start = self.last = time.perf_counter()
        self.steps: dict[str, float] = {}

    def lap(self, step: str) -> None:
        """Record the time since the previous lap as ``step``."""
        now = time.perf_counter()
        self.steps[step] = now - self.last
        self.last = now

    def total(self) -> float:
        """Seconds since the clock was made."""
        return time.perf_counter() - self.start
