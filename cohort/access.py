"""Reading a cohort store as plain xarray, and the ``.cohort`` accessor.

Zarr v3 reopens non-index coordinates (group, age, ...) as dask arrays;
:func:`open_cohort` loads those small per-subject coordinates into memory so
that ``where(..., drop=True)``, ``groupby`` and ``sel`` by them just work,
while the image variables stay lazy.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from .store import CohortStore, is_url

__all__ = ["open_cohort", "CohortAccessor"]


def _load_subject_coords(ds: xr.Dataset) -> xr.Dataset:
    small = [name for name, c in ds.coords.items() if c.dims == ("subject",) and name != "subject"]
    if not small:
        return ds
    return ds.assign_coords({name: ds.coords[name].compute() for name in small})


def open_cohort(path: str | Path, chunks: dict | None = None, storage_options: dict | None = None,
                snapshot: str | None = None) -> xr.DataTree:
    """Open a cohort store lazily, with per-subject coordinates in memory.

    Parameters
    ----------
    path : path or URL
        The cohort store: ``cohort.zarr``, a transactional store a study ran
        on (``s3://bucket/study/cohort.zarr``), or a published copy of a local
        store (see :func:`cohort.remote.publish`).
    chunks : dict, optional
        Dask chunks (default: the store's own chunks).
    storage_options : dict, optional
        fsspec options for a published copy (credentials, ``endpoint_url``, ...);
        a transactional store takes them from the AWS environment variables.
    snapshot : str, optional
        For a transactional store: read it as it was at this snapshot
        (``CohortStore(url).history()`` lists them); default the latest.
    """
    if is_url(path) and (snapshot is not None or not _is_published(str(path), storage_options)):
        tree = CohortStore(str(path)).open_tree(chunks, snapshot=snapshot)
    else:
        remote = is_url(path)
        tree = xr.open_datatree(str(path), engine="zarr", consolidated=True if remote else False,
                                chunks={} if chunks is None else chunks,
                                **({"storage_options": storage_options or {}} if remote else {}))
    return tree.map_over_datasets(_load_subject_coords)


def _is_published(url: str, storage_options: dict | None) -> bool:
    """A plain Zarr copy has root metadata; a transactional store keeps its metadata in snapshots."""
    from .remote import _fs

    fs, root = _fs(url, storage_options)
    return fs.exists(f"{root}/zarr.json")


@xr.register_dataset_accessor("cohort")
class CohortAccessor:
    """Cohort queries on a dataset with a ``subject`` dimension.

    Examples
    --------
    >>> mni = open_cohort("cohort.zarr")["mni"].to_dataset()      # doctest: +SKIP
    >>> als = mni.cohort.select(group="ALS", age=(40, 60))         # doctest: +SKIP
    >>> mni.cohort.participants                                    # doctest: +SKIP
    """

    def __init__(self, ds: xr.Dataset):
        self._ds = ds

    @property
    def participants(self) -> pd.DataFrame:
        """Per-subject coordinates as a table indexed by subject."""
        ds = _load_subject_coords(self._ds)
        cols = {name: np.asarray(c.values) for name, c in ds.coords.items()
                if c.dims == ("subject",) and name != "subject"}
        return pd.DataFrame(cols, index=pd.Index(np.asarray(ds["subject"].values), name="subject"))

    def select(self, **criteria) -> xr.Dataset:
        """Subjects matching every criterion: a value, a list of values, or a (low, high) range."""
        ds = _load_subject_coords(self._ds)
        keep = np.ones(ds.sizes["subject"], bool)
        for name, want in criteria.items():
            if name not in ds.coords:
                raise KeyError(f"no per-subject coordinate {name!r}; have {sorted(self.participants.columns)}")
            v = np.asarray(ds.coords[name].values)
            if isinstance(want, tuple) and len(want) == 2:
                keep &= (v >= want[0]) & (v <= want[1])
            elif isinstance(want, (list, set)):
                keep &= np.isin(v, list(want))
            else:
                keep &= v == want
        return ds.isel(subject=np.flatnonzero(keep))
