"""Cohort stores on object storage: a transactional Icechunk repository per store.

Object stores have no rename, so the local store's protocol (write a node into
a staging folder, rename it into place) cannot make a node write
all-or-nothing there.  An Icechunk repository can: a writer's chunks and
metadata are invisible until its commit swaps the branch reference with one
conditional write, so

* a reader sees whole nodes or none (it reads one snapshot);
* a writer killed before or during its commit leaves the previous snapshot as
  the branch head (what it uploaded is unreferenced and never read);
* writers of different nodes (the workers of one run) commit concurrently and
  rebase onto each other; two writers of the same node are detected as a
  conflict by the rebase;
* a second *run* is refused by the run lock, kept in the root's attributes and
  taken with a compare-and-swap commit;
* every commit is a snapshot the cohort can be read back at
  (:meth:`TransactionalCohortStore.history`, ``open_cohort(url, snapshot=...)``).

The store's layout and completion records are those of the local store, so
everything above :class:`~ferritin.cohort.store.CohortStore` is unchanged.

Credentials and endpoint come from the standard AWS environment variables
(``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``,
``AWS_REGION``, ``AWS_ENDPOINT_URL`` for S3-compatible servers such as MinIO
or Ceph), which every worker of a cluster must also see.
"""

from __future__ import annotations

import os
import re

import dask
import dask.array as da
import numpy as np
import xarray as xr
import zarr

from .errors import CredentialsError
from .packing import unpack_floats
from .store import (
    LAYOUT_VERSION,
    RECORD_KEY,
    CohortStore,
    NoStoreError,
    StoreError,
    StoreLocked,
    completion_record,
    is_stale_lock,
    locked_message,
    replace_stage_failures,
    specified_strings,
)

__all__ = ["TransactionalCohortStore", "StoreConflict"]

LOCK_KEY = "ferritin_lock"
BRANCH = "main"
_WRITE_TRIES = 5


#: words of an object store's refusal that mean the credentials are missing or not accepted
_CREDENTIAL_WORDS = ("credential", "accessdenied", "access denied", "invalidaccesskeyid", "signaturedoesnotmatch",
                     "403", "forbidden", "expiredtoken")


def object_store_error(path: str, exc: Exception) -> Exception:
    """A one-line user error for an object store's failure: no credentials said as such, the rest in brief.

    Icechunk's errors carry a multi-line, colour-coded trace of its Rust
    internals; a user needs the first line, and to hear "credentials" when that
    is what is missing.
    """
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(exc).__name__)
    first = re.sub(r"^[x×]\s+", "", first)  # the bullet of Icechunk's error report
    if any(word in text.casefold() for word in _CREDENTIAL_WORDS):
        return CredentialsError(f"{path}: the object store refused the request: no credentials, or credentials it "
                                f"does not accept (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or "
                                f"AWS_PROFILE); it said: {first[:160]}")
    return StoreError(f"{path}: the object store cannot be reached or used: {first[:200]}")


class StoreConflict(StoreError):
    """Two writers wrote the same node of a store at the same time."""


def _icechunk():
    try:
        import icechunk
    except ImportError as exc:  # an optional dependency: say which one
        raise StoreError("cohort stores on object storage need the icechunk package "
                         "(pip install 'ferritin[s3]')") from exc
    return icechunk


def s3_storage(url: str):
    """Icechunk storage for ``s3://bucket/prefix``, configured from the AWS environment variables."""
    ic = _icechunk()
    scheme, _, rest = url.partition("://")
    if scheme != "s3":
        raise StoreError(f"{url}: cohort stores can live in a local folder or at an s3:// URL "
                         f"(S3 or an S3-compatible server), not at {scheme}://")
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise StoreError(f"{url}: no bucket in the URL (s3://BUCKET/path/cohort.zarr)")
    env = os.environ
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    options = {"bucket": bucket, "prefix": prefix.strip("/") or None,
               "region": env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1",
               "endpoint_url": endpoint, "allow_http": bool(endpoint and endpoint.startswith("http://")),
               "force_path_style": bool(endpoint)}  # S3-compatible servers address buckets by path
    if env.get("AWS_ACCESS_KEY_ID"):
        options |= {"access_key_id": env["AWS_ACCESS_KEY_ID"],
                    "secret_access_key": env.get("AWS_SECRET_ACCESS_KEY", ""),
                    "session_token": env.get("AWS_SESSION_TOKEN")}
    else:
        options["from_env"] = True  # instance profiles, SSO, ... through the AWS credential chain
    return ic.s3_storage(**options)


def _store_by_blocks(data: da.Array, target: zarr.Array, batch_bytes: int = 256 << 20) -> None:
    """Compute ``data`` a batch of blocks at a time (at most about ``batch_bytes``) and store each block."""
    edges = [np.cumsum((0, *c)) for c in data.chunks]
    batch, size = [], 0
    for idx in [*np.ndindex(data.numblocks), None]:
        if idx is not None:
            block = data.blocks[idx]
            batch.append((idx, block))
            size += block.nbytes
        if batch and (idx is None or size >= batch_bytes):
            values = dask.compute(*(b for _, b in batch))
            for (i, _), v in zip(batch, values, strict=True):
                target[tuple(slice(e[k], e[k + 1]) for e, k in zip(edges, i, strict=True))] = v
            batch, size = [], 0


class TransactionalCohortStore(CohortStore):
    """A cohort store in an Icechunk repository on object storage (see the module's notes).

    Parameters
    ----------
    path : str
        ``s3://bucket/path/cohort.zarr``.
    create : bool
        Create the repository and its top-level groups when there is none.
    """

    def __init__(self, path: str, create: bool = False):
        ic = _icechunk()
        self.path = str(path).rstrip("/")
        storage = s3_storage(self.path)
        try:
            if ic.Repository.exists(storage):
                self._repo = ic.Repository.open(storage)
            elif create:
                self._repo = self._create(storage)
            else:
                raise NoStoreError(f"{self.path}: no cohort store here; run the participant level first "
                                   f"(`ferritin run BIDS_DIR OUTPUT_DIR participant`) or `ferritin ingest`")
        except ic.IcechunkError as exc:
            raise object_store_error(self.path, exc) from None
        if self._root().attrs.get("ferritin_layout") is None:
            raise StoreError(f"{self.path}: an Icechunk repository, but not a ferritin cohort store")

    def _create(self, storage):
        ic = _icechunk()
        try:
            repo = ic.Repository.create(storage)
        except ic.IcechunkError:  # another client created it first
            return ic.Repository.open(storage)
        session = repo.writable_session(BRANCH)
        root = zarr.open_group(session.store, mode="a", zarr_format=3)
        root.attrs.update({"ferritin_layout": LAYOUT_VERSION, "description": "ferritin cohort store"})
        for g in self.GROUPS:
            root.require_group(g)
        session.commit("create the cohort store")
        return repo

    # -- reading one snapshot -------------------------------------------------
    def _session(self, snapshot: str | None = None):
        if snapshot is None:
            return self._repo.readonly_session(branch=BRANCH)
        return self._repo.readonly_session(snapshot_id=snapshot)

    def _root(self, snapshot: str | None = None) -> zarr.Group:
        return zarr.open_group(self._session(snapshot).store, mode="r", use_consolidated=False)

    def _group(self, node: str) -> zarr.Group | None:
        self.node_path(node)  # validates the name
        try:
            g = self._root()[node.strip("/")]
        except KeyError:
            return None
        return g if isinstance(g, zarr.Group) else None

    def node_path(self, node: str) -> str:
        parts = [p for p in node.strip("/").split("/") if p]
        if not parts or any(p in (".", "..") for p in parts):
            raise ValueError(f"invalid store node {node!r}")
        return f"{self.path}/{'/'.join(parts)}"

    def exists(self, node: str) -> bool:
        return self._group(node) is not None

    def children(self, node: str) -> list[str]:
        g = self._group(node)
        return [] if g is None else sorted(name for name, _ in g.groups())

    def record(self, node: str) -> dict | None:
        g = self._group(node)
        return None if g is None else g.attrs.get(RECORD_KEY)

    def open_tree(self, chunks: dict | None = None, snapshot: str | None = None) -> xr.DataTree:
        """The whole store (at ``snapshot``, default the latest) lazily as a DataTree."""
        tree = xr.open_datatree(self._session(snapshot).store, engine="zarr", consolidated=False,
                                chunks={} if chunks is None else chunks)
        return tree.map_over_datasets(unpack_floats)

    def open_node(self, node: str, chunks: dict | None = None) -> xr.Dataset:
        if not self.exists(node):
            raise KeyError(f"{self.path}: no node {node!r}")
        return unpack_floats(xr.open_zarr(self._session().store, group=node.strip("/"), consolidated=False,
                                          chunks={} if chunks is None else chunks, zarr_format=3))

    def history(self) -> list[dict]:
        """Every commit of the store, newest first: snapshot id, time and message."""
        return [{"snapshot": s.id, "written_at": s.written_at.isoformat(timespec="seconds"), "message": s.message}
                for s in self._repo.ancestry(branch=BRANCH)]

    # -- writing: one commit per node ------------------------------------------
    def _commit(self, change, message: str) -> None:
        """Apply ``change(root_group)`` in a fresh session and commit it, rebasing onto other writers.

        A rebase that finds the same node changed by another writer fails; the
        change is then re-applied on the new head (the other writer's node
        replaced), and after a few tries :class:`StoreConflict` is raised.
        """
        ic = _icechunk()
        for _ in range(_WRITE_TRIES):
            session = self._repo.writable_session(BRANCH)
            root = zarr.open_group(session.store, mode="a", use_consolidated=False)
            if change(root, session) is False:
                return  # nothing to change
            try:
                session.commit(message, rebase_with=ic.ConflictDetector())
                return
            except (ic.ConflictError, ic.RebaseFailedError):
                continue
        raise StoreConflict(f"{self.path}: {message}: another writer kept changing the same node; "
                            "is a second run writing this store?")

    def write_node(self, node: str, ds: xr.Dataset, *, stage: str, digest: str, params: dict | None = None,
                   encoding: dict | None = None, seconds: float | None = None) -> None:
        """Write ``ds`` as ``node`` with its completion record, in one commit."""
        self.node_path(node)
        self._ensure_groups(node)
        ds = specified_strings(ds)
        ds.attrs[RECORD_KEY] = completion_record(stage, digest, params, seconds)

        def write(root, session):
            group = node.strip("/")
            # Metadata and in-memory variables now; dask-backed variables after, by blocks
            # computed wherever the current scheduler runs them and stored from here: a
            # writable session does not travel to other processes.
            ds.to_zarr(session.store, group=group, mode="w", zarr_format=3, consolidated=False,
                       encoding=encoding or {}, compute=False)
            target = zarr.open_group(session.store, path=group, mode="r+", use_consolidated=False)
            for name, var in ds.variables.items():
                if isinstance(var.data, da.Array):
                    _store_by_blocks(var.data, target[name])

        self._commit(write, f"{stage}: {node}")

    def _ensure_groups(self, node: str) -> None:
        # Parents get their own small commit, so that sibling nodes written at
        # once (two subjects' first outputs) do not conflict over creating them.
        parents = [p for p in node.strip("/").split("/") if p][:-1]

        def create(root, session):
            g, created = root, False
            for p in parents:
                if p in g:
                    g = g[p]
                else:
                    g, created = g.create_group(p), True
            return created

        self._commit(create, f"create the groups of {node}")

    def remove_node(self, node: str) -> None:
        def remove(root, session):
            if node.strip("/") not in root:
                return False
            del root[node.strip("/")]

        self._commit(remove, f"remove {node}")

    def clean_staging(self) -> None:
        """Nothing to clean: what a killed writer uploaded is never referenced by a snapshot."""

    def consolidate(self) -> None:
        """Nothing to do: a snapshot lists its nodes itself."""

    # -- the run lock ------------------------------------------------------------
    @property
    def lock_key(self) -> str:
        return self.path

    def _acquire_lock(self, info: dict) -> None:
        # A compare-and-swap on the branch: the commit fails if anything was
        # committed since this session read the lock, and the loop re-reads.
        ic = _icechunk()
        for _ in range(20):
            session = self._repo.writable_session(BRANCH)
            root = zarr.open_group(session.store, mode="a", use_consolidated=False)
            held = root.attrs.get(LOCK_KEY)
            if held and not is_stale_lock(held):
                raise StoreLocked(locked_message(self.path, held, f"release it with `ferritin unlock {self.path}`"))
            root.attrs[LOCK_KEY] = info
            try:
                session.commit(f"lock: {info['purpose']}")
                return
            except ic.ConflictError:
                continue
        raise StoreLocked(f"{self.path}: the run lock could not be taken; other writers keep committing")

    def _release_lock(self) -> None:
        def release(root, session):
            if LOCK_KEY not in root.attrs:
                return False
            del root.attrs[LOCK_KEY]

        self._commit(release, "unlock")

    def break_lock(self) -> dict | None:
        held = self._root().attrs.get(LOCK_KEY)
        if held is not None:
            self._release_lock()
        return held

    # -- log -----------------------------------------------------------------------
    def failures(self) -> dict[str, dict[str, str]]:
        g = self._group("log")
        return {} if g is None else dict(g.attrs.get("failures", {}))

    def set_failures(self, stage: str, failures: dict[str, str]) -> None:
        def update(root, session):
            log = root.require_group("log")
            recorded = dict(log.attrs.get("failures", {}))
            merged = replace_stage_failures(recorded, stage, failures)
            if merged == recorded:
                return False  # no commit for an unchanged log
            log.attrs["failures"] = merged

        self._commit(update, f"failures of {stage}")
