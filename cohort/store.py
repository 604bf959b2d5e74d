"""The cohort store: one Zarr v3 store, read as an xarray DataTree.

Layout (see README, "Architecture")::

    /                   attrs: ferritin layout version
    /participants       table indexed by ``subject`` (group, age, sex, ...)
    /native/<sub>       megre_mag, megre_phase (echo, i, j, k); t1w (t1_i, t1_j, t1_k)
    /derived/<sub>      per-subject stage outputs
    /mni                stacked (subject, x, y, z) arrays
    /stats/<analysis>   voxelwise results
    /log                attrs: failures by stage and subject

Writes of one node (a subject's stage output) are atomic: the node is written
completely into a staging folder beside the store and then renamed into
place, with its completion record (stage, digest of inputs and parameters)
inside its attributes.  A reader therefore sees either the whole node with its
record or no node; a killed writer leaves only staging debris, which the next
writer removes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import threading
import uuid
import warnings
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import xarray as xr
import zarr

from .errors import FerritinError
from .packing import unpack_floats

__all__ = ["CohortStore", "StoreError", "NoStoreError", "StoreLocked", "is_url", "digest_files", "digest_params", "completion_record", "RECORD_KEY", "LAYOUT_VERSION", "specified_strings"]

RECORD_KEY = "ferritin_record"
LAYOUT_VERSION = 1
_CHUNK = 1 << 20


def digest_files(paths, extra: dict | None = None) -> str:
    """SHA-256 over the content of ``paths`` (in the given order) and ``extra``."""
    h = hashlib.sha256()
    for p in paths:
        h.update(Path(p).name.encode())
        with open(p, "rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
    if extra:
        h.update(json.dumps(extra, sort_keys=True, default=str).encode())
    return h.hexdigest()


def digest_params(*parts) -> str:
    """SHA-256 of JSON-serialisable parts (digests of inputs, parameters)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def completion_record(stage: str, digest: str, params: dict | None, seconds: float | None) -> dict:
    """The record written with a node: what made it, from what (``digest``), when, and how long it took."""
    record = {"stage": stage, "digest": digest, "params": params or {},
              "completed": datetime.now(UTC).isoformat(timespec="seconds")}
    if seconds is not None:
        record["seconds"] = round(float(seconds), 1)
    return record


def is_url(location) -> bool:
    """Whether a store location is an object-store URL (``s3://...``) rather than a local path."""
    return isinstance(location, str) and "://" in location and not location.startswith("file://")


def specified_strings(ds: xr.Dataset) -> xr.Dataset:
    """A copy of ``ds`` whose text variables and coordinates are stored as variable-length UTF-8.

    NumPy's fixed-width unicode (``<U6``) and its variable-width ``StringDType`` (what a
    store's text reads back as, and what pandas' string columns give) both become Zarr's
    ``FixedLengthUTF32``, a data type with no Zarr v3 specification that other Zarr
    libraries may not read; variable-length UTF-8 (``string``) has one.  Read back, the
    values are the same strings.
    """
    ds = ds.copy()
    for name, var in ds.variables.items():
        if var.dtype.kind in "UT":
            ds[name] = var.astype(object)
    return ds


class CohortStore:
    """A cohort store: a local ``.zarr`` folder, or a transactional store at an ``s3://`` URL.

    Parameters
    ----------
    path : path or str
        The ``.zarr`` folder, or an object-store URL (then the store is a
        :class:`~ferritin.cohort.transactional.TransactionalCohortStore`).
        Created (with its top-level groups) when ``create=True`` and missing.
    """

    GROUPS = ("native", "derived", "mni", "stats", "log")

    def __new__(cls, path=None, create: bool = False):
        if cls is CohortStore and is_url(path):
            from .transactional import TransactionalCohortStore

            return super().__new__(TransactionalCohortStore)
        return super().__new__(cls)

    def __init__(self, path: str | Path, create: bool = False):
        self.path = Path(path).absolute()
        if self.path.exists() and not self.path.is_dir():
            raise StoreError(f"{self.path} is a file, not a cohort store; choose a folder name such as cohort.zarr")
        if not (self.path / "zarr.json").exists():
            if not create:
                raise NoStoreError(f"{self.path}: no cohort store here; run the participant level first "
                                  f"(`ferritin run BIDS_DIR OUTPUT_DIR participant`) or `ferritin ingest`")
            if self.path.exists() and any(self.path.iterdir()):
                raise StoreError(f"{self.path} is a folder with other files in it, not a cohort store; "
                                 "choose a new path (e.g. cohort.zarr)")
            try:
                self._create()
            except OSError as exc:
                raise StoreError(f"{self.path}: the cohort store cannot be created: {exc.strerror or exc}") from exc
        try:
            root = zarr.open_group(str(self.path), mode="r", use_consolidated=False)
        except Exception as exc:  # zarr raises several types for foreign or broken metadata
            raise StoreError(f"{self.path}: not a readable cohort store ({type(exc).__name__}: {exc})") from exc
        if root.attrs.get("ferritin_layout") is None:
            raise StoreError(f"{self.path}: a Zarr store, but not a ferritin cohort store")

    # -- structure ---------------------------------------------------------
    def _create(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        root = zarr.open_group(str(self.path), mode="a", zarr_format=3)
        root.attrs.update({"ferritin_layout": LAYOUT_VERSION, "description": "ferritin cohort store"})
        for g in self.GROUPS:
            root.require_group(g)

    @property
    def staging(self) -> Path:
        return self.path.parent / f".{self.path.name}.staging"

    def node_path(self, node: str) -> Path:
        parts = [p for p in node.strip("/").split("/") if p]
        if not parts or any(p in (".", "..") or os.sep in p for p in parts):
            raise ValueError(f"invalid store node {node!r}")
        return self.path.joinpath(*parts)

    def exists(self, node: str) -> bool:
        return (self.node_path(node) / "zarr.json").exists()

    def children(self, node: str) -> list[str]:
        """Names of the complete child nodes of ``node`` (sorted)."""
        base = self.node_path(node)
        if not base.is_dir():
            return []
        return sorted(p.name for p in base.iterdir() if (p / "zarr.json").exists() and not p.name.startswith("."))

    # -- records -----------------------------------------------------------
    def record(self, node: str) -> dict | None:
        """The completion record of ``node``, or None if it is not complete."""
        meta = self.node_path(node) / "zarr.json"
        if not meta.exists():
            return None
        try:
            attrs = json.loads(meta.read_text()).get("attributes", {})
        except (OSError, json.JSONDecodeError):
            return None
        return attrs.get(RECORD_KEY)

    def is_current(self, node: str, digest: str) -> bool:
        rec = self.record(node)
        return rec is not None and rec.get("digest") == digest

    # -- writing -----------------------------------------------------------
    def write_node(self, node: str, ds: xr.Dataset, *, stage: str, digest: str, params: dict | None = None,
                   encoding: dict | None = None, seconds: float | None = None) -> None:
        """Write ``ds`` as ``node`` atomically, with its completion record.

        The dataset is written into a staging folder on the same file system
        and renamed into place; an existing node is replaced only once the
        new one is complete.  ``seconds``, the wall time that computed the
        node, goes into the record (provenance; not part of the digest).
        """
        target = self.node_path(node)
        if not target.parent.joinpath("zarr.json").exists():
            self._ensure_groups(node)
        self.staging.mkdir(parents=True, exist_ok=True)
        tmp = self.staging / f"{uuid.uuid4().hex}"
        ds = specified_strings(ds)
        ds.attrs[RECORD_KEY] = completion_record(stage, digest, params, seconds)
        try:
            ds.to_zarr(str(tmp), mode="w", zarr_format=3, consolidated=False, encoding=encoding or {})
            old = None
            if target.exists():
                old = self.staging / f"old-{uuid.uuid4().hex}"
                os.replace(target, old)
            os.replace(tmp, target)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    def _ensure_groups(self, node: str) -> None:
        parts = [p for p in node.strip("/").split("/") if p][:-1]
        root = zarr.open_group(str(self.path), mode="a", use_consolidated=False)
        g = root
        for p in parts:
            g = g.require_group(p)

    def remove_node(self, node: str) -> None:
        target = self.node_path(node)
        if target.exists():
            self.staging.mkdir(parents=True, exist_ok=True)
            old = self.staging / f"old-{uuid.uuid4().hex}"
            os.replace(target, old)
            shutil.rmtree(old, ignore_errors=True)

    def clean_staging(self) -> None:
        """Remove what killed writers left behind (never visible to readers)."""
        if self.staging.exists():
            shutil.rmtree(self.staging, ignore_errors=True)

    # -- one run at a time ----------------------------------------------------
    @property
    def lock_path(self) -> Path:
        return self.path.parent / f".{self.path.name}.lock"

    @contextmanager
    def lock(self, purpose: str):
        """Hold the store for one run; a second run is refused with :class:`StoreLocked`.

        The lock names its holder (purpose, process, host, start time).  A lock
        left by a process that no longer exists on this host (a killed client)
        is taken over, so a killed run resumes with a plain re-run.  Nested use
        within one process is allowed.
        """
        key = self.lock_key
        with _HELD_GUARD:
            nested = bool(_HELD.get(key))
            if nested:
                _HELD[key] += 1
        if nested:
            try:
                yield
            finally:
                with _HELD_GUARD:
                    _HELD[key] -= 1
            return
        info = {"pid": os.getpid(), "host": socket.gethostname(), "purpose": purpose,
                "started": datetime.now(UTC).isoformat(timespec="seconds")}
        self._acquire_lock(info)
        with _HELD_GUARD:
            _HELD[key] = 1
        try:
            yield
        finally:
            with _HELD_GUARD:
                _HELD.pop(key, None)
            self._release_lock()

    @property
    def lock_key(self) -> str:
        """What identifies this store's lock within one process."""
        return str(self.lock_path)

    def _acquire_lock(self, info: dict) -> None:
        # A file beside the store, created atomically (O_EXCL).
        for attempt in range(2):
            try:
                fd = os.open(self.lock_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                try:
                    held = json.loads(self.lock_path.read_text())
                except (OSError, ValueError):
                    held = {}
                if is_stale_lock(held) and attempt == 0:
                    self.lock_path.unlink(missing_ok=True)
                    continue
                raise StoreLocked(locked_message(self.path, held, f"delete {self.lock_path}")) from None
            with os.fdopen(fd, "w") as fh:
                json.dump(info, fh)
            return

    def _release_lock(self) -> None:
        with contextlib.suppress(OSError):  # an empty staging folder is debris, not state
            self.staging.rmdir()
        self.lock_path.unlink(missing_ok=True)

    def break_lock(self) -> dict | None:
        """Remove the lock of a run that no longer exists; returns what it said, or None if there was none."""
        try:
            held = json.loads(self.lock_path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            held = {}
        self.lock_path.unlink(missing_ok=True)
        return held

    # -- log -----------------------------------------------------------------
    def failures(self) -> dict[str, dict[str, str]]:
        """Failures recorded so far: ``{stage: {subject: reason}}``."""
        root = zarr.open_group(str(self.path), mode="r", use_consolidated=False)
        if "log" not in root:
            return {}
        return dict(root["log"].attrs.get("failures", {}))

    def set_failures(self, stage: str, failures: dict[str, str]) -> None:
        """Replace the failure list of ``stage`` (called by the one client of a run)."""
        root = zarr.open_group(str(self.path), mode="a", use_consolidated=False)
        log = root.require_group("log")
        log.attrs["failures"] = replace_stage_failures(log.attrs.get("failures", {}), stage, failures)

    # -- reading -------------------------------------------------------------
    def consolidate(self) -> None:
        """Refresh the consolidated metadata so plain ``xr.open_datatree`` is fast."""
        with warnings.catch_warnings():
            # zarr warns that consolidated metadata is not (yet) in the v3 spec;
            # xarray and zarr-python read it, and the store stays valid without it.
            warnings.simplefilter("ignore", UserWarning)
            zarr.consolidate_metadata(str(self.path))

    def open_tree(self, chunks: dict | None = None) -> xr.DataTree:
        """Open the whole store lazily as a DataTree (dask-backed variables)."""
        tree = xr.open_datatree(str(self.path), engine="zarr", consolidated=False,
                                chunks={} if chunks is None else chunks)
        return tree.map_over_datasets(unpack_floats)

    def open_node(self, node: str, chunks: dict | None = None) -> xr.Dataset:
        if not self.exists(node):
            raise KeyError(f"{self.path}: no node {node!r}")
        return unpack_floats(xr.open_zarr(str(self.path), group=node.strip("/"), consolidated=False,
                                          chunks={} if chunks is None else chunks, zarr_format=3))


class StoreError(FerritinError, ValueError):
    """A path that cannot be (or become) a cohort store: a file, a foreign folder, no write access."""


class NoStoreError(StoreError, FileNotFoundError):
    """No cohort store where one was expected: the participant level has not run there."""


class StoreLocked(RuntimeError):
    """Another run holds the cohort store."""


_HELD: dict[str, int] = {}  # lock path -> hold count, for nested locks of this process
_HELD_GUARD = threading.Lock()


def replace_stage_failures(recorded: dict, stage: str, failures: dict[str, str]) -> dict:
    """The failure log ``recorded`` with the list of ``stage`` replaced (removed when empty)."""
    merged = dict(recorded)
    if failures:
        merged[stage] = dict(sorted(failures.items()))
    else:
        merged.pop(stage, None)
    return merged


def is_stale_lock(held: dict) -> bool:
    """Whether a lock was left by a process of this host that no longer exists."""
    return held.get("host") == socket.gethostname() and not _pid_alive(int(held.get("pid", -1)))


def locked_message(where, held: dict, how_to_release: str) -> str:
    return (f"{where} is in use by another run ({held.get('purpose', '?')}, pid {held.get('pid', '?')} "
            f"on {held.get('host', '?')} since {held.get('started', '?')}); wait for it to finish, or if "
            f"that run no longer exists, {how_to_release}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def affine_attr(affine: np.ndarray) -> list[list[float]]:
    """A 4x4 affine as nested lists of Python floats (exact in JSON)."""
    return [[float(v) for v in row] for row in np.asarray(affine, dtype=np.float64)]
