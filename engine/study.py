"""One study run: ingest → participant level → group level → report.

The command line (``ferritin run``, ``ferritin demo``) and the benchmarks run
a study through :func:`run_study`, so the sequence, the store's place in the
output folder and what each level returns are written once.  Scoring a run
against the effects planted in a simulated cohort is not part of a study: it
is :func:`ferritin.engine.recovery.score_planted_effects`, which the demo
calls and a user may call on any simulated cohort.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from ferritin.cohort.remote import upload_folder
from ferritin.cohort.store import CohortStore, is_url

from .ingest import IngestResult, ingest
from .pipeline import GroupResult, RunSummary, run_group, run_participants
from .preflight import check_spec_against_dataset
from .spec import SpecError, StudySpec, complete_spec

__all__ = ["LEVELS", "StudyResult", "run_study", "store_path", "write_report"]

#: the levels of a study, in the order they run
LEVELS = ("participant", "group")


@dataclass
class StudyResult:
    """What one call of :func:`run_study` did."""

    store: Path | str  # a URL when the study's output is on object storage
    out: Path | str
    ingest: IngestResult | None = None  # participant level: subjects read from BIDS into the store
    participants: RunSummary | None = None  # participant level: per-subject stages
    group: GroupResult | None = None  # group level: :func:`~ferritin.engine.pipeline.run_group`'s result
    report: Path | str | None = None
    seconds: dict = field(default_factory=dict)  # wall time per level


def store_path(out_dir: str | Path) -> Path | str:
    """Where a study's cohort store lives in its output folder (or under its ``s3://`` URL)."""
    if is_url(out_dir):
        return f"{str(out_dir).rstrip('/')}/cohort.zarr"
    return Path(out_dir) / "cohort.zarr"


def run_study(bids_dir: str | Path, out_dir: str | Path, spec: StudySpec | dict, client=None, *,
              levels: tuple[str, ...] = LEVELS, participant_label: list[str] | None = None,
              progress: bool = True, report: bool = True) -> StudyResult:
    """Run the levels of a study on a BIDS dataset; outputs and the cohort store go to ``out_dir``.

    Parameters
    ----------
    bids_dir : the BIDS dataset.
    out_dir : output folder (a BIDS derivative dataset; the store is ``out_dir/cohort.zarr``), or an
        ``s3://`` URL: the store is then a transactional store there, and the group level's files are
        written in a temporary folder and uploaded once complete.
    spec : StudySpec or dict
        The study spec (:func:`ferritin.engine.spec.load_spec`), or a partial dict laid over the default.
    client : dask.distributed.Client, optional
        Where the participant level runs; needed only for that level.
    levels : which of ``"participant"`` and ``"group"`` to run (in that order).
    participant_label : only these subjects at the participant level (with or without ``sub-``).
    progress : draw progress bars.
    report : write ``report.html`` after the group level.
    """
    unknown = set(levels) - set(LEVELS)
    if unknown or not levels:
        raise ValueError(f"levels must be some of {LEVELS}, got {list(levels)}")
    if "participant" in levels and client is None:
        raise ValueError("the participant level needs a Dask client")
    spec = complete_spec(spec)
    if "participant" in levels and "group" not in levels:
        # the participant level needs no group or score; say now what the group level will refuse
        try:
            check_spec_against_dataset(spec, bids_dir)
        except SpecError as exc:
            logging.getLogger("ferritin").warning("the group level will refuse this: %s", exc)
    elif "participant" in levels:
        check_spec_against_dataset(spec, bids_dir)
    remote = is_url(out_dir)
    out = str(out_dir).rstrip("/") if remote else Path(out_dir)
    if not remote:
        make_output_dir(out)
    result = StudyResult(store=store_path(out), out=out)
    if "participant" in levels:
        t0 = time.perf_counter()
        result.ingest = ingest(bids_dir, result.store, client, participant_label, progress=progress)
        labels = None
        if participant_label:
            labels = [lab if lab.startswith("sub-") else f"sub-{lab}" for lab in participant_label]
        # a subject whose ingest failed now (its folder gone, a file broken) is not processed from what an
        # earlier run left in the store; the group level excludes it by the same record
        lost = set(result.ingest.failed)
        labels = [s for s in (labels or CohortStore(result.store).children("native")) if s not in lost]
        result.participants = run_participants(result.store, spec, client, labels, progress=progress)
        result.participants.failed_at_ingest = dict(result.ingest.failed)
        result.seconds["participant"] = time.perf_counter() - t0
    if "group" in levels:
        t0 = time.perf_counter()
        if remote:
            result.group, result.report = _group_to_object_store(result.store, spec, out, report, client)
        else:
            result.group = run_group(result.store, spec, out, client)
            if report:
                result.report = write_report(out)
        result.seconds["group"] = time.perf_counter() - t0
    return result


def make_output_dir(out: Path) -> None:
    """Create the output folder, or say in one line why it cannot be one.

    Raises
    ------
    OutputError
        When a part of the path is a file, or the file system refuses the folder
        (``/proc``, read-only, no permission).
    """
    from ferritin.cohort.errors import OutputError

    try:
        blocking = next((p for p in [out, *out.parents] if p.exists() and not p.is_dir()), None)
        if blocking is not None:
            raise OutputError(f"{out}: cannot be the output folder: {blocking} is a file, not a folder")
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".ferritin-write-check"
        probe.touch()
        probe.unlink()
    except OutputError:
        raise
    except OSError as exc:  # a name too long, a read-only or virtual file system, no permission
        raise OutputError(f"{_shortened(out)}: cannot be the output folder: {exc.strerror or exc}") from None


def _shortened(path: Path, width: int = 100) -> str:
    text = str(path)
    return text if len(text) <= width else f"{text[:width - 3]}..."


def _group_to_object_store(store: str, spec, out_url: str, report: bool, client=None) -> tuple[GroupResult, str | None]:
    """The group level with its files written locally, then uploaded beside the store."""
    with tempfile.TemporaryDirectory(prefix="ferritin-group-") as tmp:
        group = run_group(store, spec, tmp, client)
        written = write_report(Path(tmp)) if report else None
        upload_folder(tmp, out_url)
    return group, (f"{out_url}/{written.relative_to(tmp).as_posix()}" if written else None)


def write_report(out: Path) -> Path | None:
    """The report, or None when it could not be written: the statistics are on disk either way."""
    import sys

    from .report import build_report

    try:
        return build_report(out)
    except Exception as exc:  # a figure failing must not hide the statistics
        print(f"ferritin: the report could not be written: {type(exc).__name__}: {exc}", file=sys.stderr)
        return None
