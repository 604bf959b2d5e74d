"""How images and tables become xarray Datasets in the cohort store.

Native images keep NIfTI voxel order with explicit voxel-index dimensions
(``i, j, k`` for the GRE grid, ``t1_i, t1_j, t1_k`` for the T1w grid) because
native grids are not aligned with world axes; the affines that map voxel
indices to scanner millimetres are in the attributes.  MNI arrays use world
dimensions ``x, y, z`` with millimetre coordinates.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr

from .bids import SubjectImages
from .packing import packed_variable
from .store import affine_attr

__all__ = ["native_dataset", "participants_dataset", "participants_frame", "mni_coords", "mni_stack_dataset"]


def native_dataset(img: SubjectImages, sources: dict[str, str] | None = None) -> xr.Dataset:
    """The ``/native/<sub>`` node of one subject.

    Images acquired as integers are kept as their integer codes with CF scaling
    (:mod:`~ferritin.cohort.packing`); :meth:`CohortStore.open_node` reads them back as float32.
    """
    echo = np.arange(1, img.mag.shape[0] + 1)
    ds = xr.Dataset(
        {
            "megre_mag": packed_variable(("echo", "i", "j", "k"), img.mag,
                                         {"long_name": "multi-echo GRE magnitude", "units": "a.u.",
                                          "affine": affine_attr(img.gre_affine)}),
            "megre_phase": packed_variable(("echo", "i", "j", "k"), img.phase,
                                           {"long_name": "multi-echo GRE phase", "units": "rad",
                                            "affine": affine_attr(img.gre_affine)}),
        },
        coords={
            "echo": ("echo", echo),
            "echo_time": ("echo", img.echo_times, {"units": "s"}),
        },
        attrs={
            "subject": img.subject,
            "b0_tesla": float(img.b0),
            "gre_affine": affine_attr(img.gre_affine),
            "notes": list(img.notes),
        },
    )
    if img.t1w is not None:
        ds["t1w"] = packed_variable(("t1_i", "t1_j", "t1_k"), img.t1w,
                                    {"long_name": "T1-weighted image", "units": "a.u.",
                                     "affine": affine_attr(img.t1w_affine)})
        ds.attrs["t1w_affine"] = affine_attr(img.t1w_affine)
    if sources:
        ds.attrs["sources"] = dict(sources)
    return ds


def participants_dataset(table: pd.DataFrame, descriptions: dict | None = None) -> xr.Dataset:
    """The ``/participants`` node: one variable per column, indexed by subject.

    Text columns with missing values are stored with ``""`` for missing (Zarr
    text arrays cannot hold NaN); numeric columns keep NaN.
    """
    table = table.copy()
    table.index.name = "subject"
    data_vars = {}
    for col in table.columns:
        s = table[col]
        if pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s):
            values = s.to_numpy(dtype=np.float64) if s.isna().any() else s.to_numpy()
        elif pd.api.types.is_bool_dtype(s):
            values = s.to_numpy(dtype=bool)
        else:
            # object (variable-length) text: Zarr v3 has a specified string
            # type for it, unlike fixed-width UTF-32
            values = np.array(["" if pd.isna(v) else str(v) for v in s], dtype=object)
        attrs = {}
        desc = (descriptions or {}).get(col)
        if isinstance(desc, dict):
            attrs = {k: v for k, v in desc.items() if isinstance(v, (str, int, float, dict, list))}
        data_vars[str(col)] = ("subject", values, attrs)
    ds = xr.Dataset(data_vars, coords={"subject": np.array([str(v) for v in table.index], dtype=object)})
    ds.attrs["notes"] = [str(n) for n in table.attrs.get("notes", [])]  # how the table was read, for the report
    return ds


def participants_frame(ds: xr.Dataset) -> pd.DataFrame:
    """The participants node back as a DataFrame (``""`` → missing), columns in name order.

    The order of a Zarr group's arrays is not fixed, so without sorting the
    tables written from this frame differ between runs in their column order.
    """
    df = ds.to_dataframe()
    df = df[sorted(df.columns)]
    for col in df.columns:
        if df[col].dtype == object or pd.api.types.is_string_dtype(df[col]):
            df[col] = df[col].replace("", np.nan)
    return df


def mni_coords(shape: tuple[int, int, int], affine: np.ndarray) -> dict[str, np.ndarray]:
    """Millimetre coordinates of an axis-aligned (MNI) grid, by axis."""
    affine = np.asarray(affine, dtype=float)
    if not np.allclose(affine[:3, :3], np.diag(np.diag(affine[:3, :3]))):
        raise ValueError("MNI grids must be axis-aligned (diagonal affine)")
    return {ax: affine[n, n] * np.arange(shape[n]) + affine[n, 3] for n, ax in enumerate("xyz")}


def mni_stack_dataset(variables: dict, subjects, grid, participants: dict | None = None,
                      attrs: dict | None = None) -> xr.Dataset:
    """A stacked ``(subject, x, y, z)`` dataset on an MNI grid.

    Parameters
    ----------
    variables : dict of name -> array (subject, x, y, z)
    subjects : sequence of str
    grid : cohort.templates.MNIGrid
    participants : dict of column -> sequence, optional
        Per-subject values attached as coordinates on ``subject`` so that
        ``ds.chi.where(ds.group == "ALS")`` works.
    """
    subjects = [str(s) for s in subjects]
    coords = {"subject": ("subject", np.array(subjects, dtype=object)),
              **{ax: (ax, v, {"units": "mm"}) for ax, v in grid.coords().items()}}
    for col, values in (participants or {}).items():
        values = np.asarray(values)
        if values.dtype == object or values.dtype.kind == "U":
            values = np.array(["" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v) for v in values],
                              dtype=object)
        coords[col] = ("subject", values)
    data_vars = {}
    for name, arr in variables.items():
        arr = np.asarray(arr) if not hasattr(arr, "dask") else arr
        if arr.shape != (len(subjects), *grid.shape):
            raise ValueError(f"{name}: shape {arr.shape} is not (subject, *grid) = {(len(subjects), *grid.shape)}")
        data_vars[name] = (("subject", "x", "y", "z"), arr)
    return xr.Dataset(data_vars, coords=coords,
                      attrs={"affine": affine_attr(grid.affine), "space": "MNI152NLin2009cSym", **(attrs or {})})
