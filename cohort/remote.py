"""Cohort stores on object storage (S3 and anything else fsspec speaks).

Computation writes a local (or shared-file-system) store, where atomic
renames make every node write all-or-nothing.  Object stores have no rename,
so a finished store is *published*: every object is uploaded under its final
key with the root ``zarr.json`` last, and objects of the previous version
that the new one no longer has are deleted after it.  A reader sees a store
only once its root metadata exists, i.e. the old version until the upload is
complete; an interrupted upload leaves the previous version readable (or no
store at all on a first publish).  Read it back with
``cohort.open_cohort("s3://bucket/cohort.zarr", storage_options={...})``.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from .errors import CredentialsError

__all__ = ["publish", "upload_folder"]

#: botocore's names for a request it could not sign
_NO_CREDENTIALS = ("NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError")


@contextlib.contextmanager
def _credentials_named(url: str):
    """Object storage that refuses for want of credentials, as a :class:`CredentialsError`; anything else as is."""
    try:
        yield
    except PermissionError as exc:  # s3fs's translation of AccessDenied / 403
        raise CredentialsError(f"{url}: the object store refused access ({exc}); check the credentials "
                               f"(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY or AWS_PROFILE)") from None
    except Exception as exc:
        if type(exc).__name__ not in _NO_CREDENTIALS:
            raise
        raise CredentialsError(f"{url}: no credentials for the object store (set AWS_ACCESS_KEY_ID and "
                               f"AWS_SECRET_ACCESS_KEY, or AWS_PROFILE)") from None


def _fs(url: str, storage_options: dict | None):
    import fsspec

    fs, root = fsspec.core.url_to_fs(url, **(storage_options or {}))
    return fs, root.rstrip("/")


def publish(store_path: str | Path, url: str, storage_options: dict | None = None) -> int:
    """Upload a local cohort store to ``url``; returns the number of objects written.

    Raises
    ------
    FileNotFoundError
        If ``store_path`` is not a cohort store.
    """
    from .store import CohortStore

    store = CohortStore(store_path)  # checks it is a cohort store
    store.consolidate()
    local = store.path
    files = sorted(p for p in local.rglob("*") if p.is_file() and not any(part.startswith(".") for part in
                                                                           p.relative_to(local).parts))
    root_meta = local / "zarr.json"
    with _credentials_named(url):
        fs, root = _fs(url, storage_options)
        old = set()
        if fs.exists(f"{root}/zarr.json"):
            old = {p[len(root) + 1:] for p in fs.find(root)}
        ordered = [p for p in files if p != root_meta] + [root_meta]
        for p in ordered:  # the root metadata last: readers see the new store only once it is whole
            fs.put_file(str(p), f"{root}/{p.relative_to(local).as_posix()}")
        new = {p.relative_to(local).as_posix() for p in files}
        stale = sorted(old - new)
        if stale:
            fs.rm([f"{root}/{k}" for k in stale])
    return len(ordered)


def upload_folder(folder: str | Path, url: str, storage_options: dict | None = None) -> int:
    """Upload every file under ``folder`` to ``url`` (same relative keys); returns how many.

    Used for a study's group-level files (tables, maps, report) when its output
    is on object storage.  The S3 endpoint and credentials come from
    ``storage_options`` or the standard AWS environment variables.
    """
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    with _credentials_named(url):
        fs, root = _fs(url, storage_options)
        for p in files:
            fs.put_file(str(p), f"{root}/{p.relative_to(folder).as_posix()}")
    return len(files)
