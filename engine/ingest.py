"""Ingest a BIDS dataset into a cohort store, one Dask task per subject.

Re-running is a no-op for subjects whose files have not changed: each
subject's node carries the SHA-256 of its image and sidecar files.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from ferritin.cohort import outcome
from ferritin.cohort.bids import SubjectFiles, discover, load_subject
from ferritin.cohort.errors import DatasetError, SubjectError
from ferritin.cohort.layout import native_dataset, participants_dataset
from ferritin.cohort.outcome import Status
from ferritin.cohort.progress import track
from ferritin.cohort.store import CohortStore, digest_files, digest_params, is_url

from .cluster import subject_task

__all__ = ["ingest", "IngestResult", "ingest_subject"]

log = logging.getLogger("ferritin.ingest")

#: Bump when the native layout changes, so stores re-ingest.
INGEST_VERSION = 1
#: Bump when how participants.tsv is read changes (2: the sex vocabulary, one spelling per level, age range),
#: so that stores read their table again without re-ingesting the images.
PARTICIPANTS_VERSION = 2


@dataclass
class IngestResult:
    """What an ingest did."""

    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    dataset_problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # how participants.tsv was read where not as written

    def summary(self) -> str:
        lines = [f"ingested {len(self.written)}, unchanged {len(self.skipped)}, failed {len(self.failed)}"]
        lines += [f"  FAILED {sub}: {why.removeprefix(sub + ': ')}" for sub, why in sorted(self.failed.items())]
        lines += [f"  problem: {p}" for p in self.dataset_problems]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


@subject_task
def ingest_subject(files: SubjectFiles, store_path: str) -> outcome.Outcome:
    """Convert one subject; returns its :class:`~ferritin.cohort.outcome.Outcome`
    (written, skipped because unchanged, or failed with the reason).
    Runs on a worker; never raises for bad input.
    """
    store = CohortStore(store_path)
    node = f"native/{files.subject}"
    try:
        digest = digest_files(files.all_files(), extra={"ingest_version": INGEST_VERSION})
        if store.is_current(node, digest):
            return outcome.skipped(files.subject)
        images = load_subject(files)
        sources = {"gre": [files.rel(e.mag) for e in files.echoes], "t1w": files.rel(files.t1w) if files.t1w else ""}
        ds = native_dataset(images, sources={k: str(v) for k, v in sources.items()})
        store.write_node(node, ds, stage="ingest", digest=digest,
                         params={"ingest_version": INGEST_VERSION, "layout": files.layout})
        return outcome.written(files.subject)
    except SubjectError as exc:
        return outcome.failed(files.subject, str(exc))
    except OSError as exc:
        return outcome.failed(files.subject, f"{files.subject}: I/O error: {exc}")


def ingest(bids_dir: str | Path, store_path: str | Path, client, participant_label: list[str] | None = None,
           progress: bool = True) -> IngestResult:
    """Convert a BIDS dataset into a cohort store.

    Parameters
    ----------
    bids_dir : path
        BIDS dataset root.
    store_path : path or str
        Cohort store (``.zarr`` folder, or an ``s3://`` URL); created if missing.
    client : distributed.Client
        Where the per-subject tasks run.
    participant_label : list of str, optional
        Ingest only these subjects.
    progress : bool
        Show a progress bar on stderr.

    Returns
    -------
    IngestResult
        Subjects written, skipped (unchanged) and failed with reasons.
        Failures are also recorded in the store's ``/log`` node.
    """
    bids = Path(bids_dir).absolute()
    store_abs = None if is_url(store_path) else Path(store_path).absolute()
    if store_abs is not None and (store_abs == bids or (bids in store_abs.parents
                                                        and (bids / "derivatives") not in store_abs.parents)):
        raise DatasetError(f"{store_path}: the cohort store must not be the BIDS dataset {bids_dir} or sit among "
                           "its raw data; put it outside, or under its derivatives/ folder")
    dataset = discover(bids_dir, participant_label)
    store = CohortStore(store_path, create=True)
    with store.lock("ingest"):
        return _ingest(dataset, store, client, progress, Path(bids_dir), participant_label)


def _ingest(dataset, store: CohortStore, client, progress: bool, bids_dir: Path, participant_label) -> IngestResult:
    store.clean_staging()
    result = IngestResult(notes=dataset.notes)
    for p in dataset.problems:
        if p.subject:
            result.failed[p.subject] = str(p)
        else:
            result.dataset_problems.append(str(p))
    subjects = sorted(dataset.subjects.values(), key=lambda f: f.subject)
    futures = client.map(ingest_subject, subjects, store_path=str(store.path), pure=False,
                         key=[f"ingest-{f.subject}" for f in subjects])
    for fut in track(futures, "ingest", enabled=progress):
        try:
            status, sub, reason = fut.result()
        except Exception as exc:  # a worker died or a bug: record, go on
            sub = fut.key.removeprefix("ingest-") if isinstance(fut.key, str) else str(fut.key)
            status, reason = Status.FAILED, f"{sub}: unexpected error: {type(exc).__name__}: {exc}"
        if status == Status.WRITTEN:
            result.written.append(sub)
        elif status == Status.SKIPPED:
            result.skipped.append(sub)
        else:
            result.failed[sub] = reason
    result.written.sort()
    result.skipped.sort()
    # Participants: every valid row of participants.tsv (the table is the truth
    # about the cohort; which subjects have images is told by /native).
    tsv_digest = digest_files([Path(bids_dir) / "participants.tsv"]
                              + ([Path(bids_dir) / "participants.json"]
                                 if (Path(bids_dir) / "participants.json").exists() else []))
    digest = digest_params(tsv_digest, INGEST_VERSION, PARTICIPANTS_VERSION)
    if not store.is_current("participants", digest):
        store.write_node("participants", participants_dataset(dataset.participants, dataset.descriptions),
                         stage="ingest", digest=digest)
    selected = participant_label is not None
    previous = store.failures().get("ingest", {})
    failures = dict(previous) if selected else {}
    if selected:
        for sub in result.written + result.skipped:
            failures.pop(sub, None)
    failures.update(result.failed)
    store.set_failures("ingest", failures)
    store.consolidate()
    return result
