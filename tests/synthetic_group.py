"""A cohort store with known per-subject MNI maps, for group-level tests: in patients χ rises with severity
in a sphere around PLANT_MM (left thalamus) and GM falls there; nothing elsewhere; one extra subject fails QC
and one subject's χ misses a patch inside the brain."""

from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr
from scipy import ndimage

from ferritin.cohort.layout import participants_dataset
from ferritin.cohort.store import affine_attr
from ferritin.cohort.templates import load_template
from ferritin.engine.nuclei import subject_nuclei
from ferritin.engine.spec import load_spec

VS = 3.0
PLANT_MM = (-14.0, -17.0, 7.0)  # left thalamus


def _smooth_noise(rng, shape, fwhm_vox=2.5):
    sigma = fwhm_vox / np.sqrt(8 * np.log(2))
    x = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
    return x / x.std()


def uncovered_patch(grid):
    """The patch of the brain that one subject's χ does not cover."""
    ijk = np.round(grid.world_to_voxel([[30.0, -60.0, 20.0]])[0]).astype(int)
    return tuple(slice(c - 2, c + 3) for c in ijk)


def write_group_store(store, n_per_group: int = 9, seed: int = 5) -> tuple[list[str], dict]:
    """Fill ``store`` (a new :class:`CohortStore`) with ``2 * n_per_group + 1`` subjects; returns the subjects
    and a group-level spec (as a dict) with SVC regions and an ROI sphere."""
    rng = np.random.default_rng(seed)
    tpl = load_template(VS)
    grid = tpl.grid
    subjects = [f"sub-{n:02d}" for n in range(1, 2 * n_per_group + 2)]  # one extra: fails QC
    rows = []
    ijk = np.indices(grid.shape).reshape(3, -1).T @ grid.affine[:3, :3].T + grid.affine[:3, 3]
    dist = np.linalg.norm(ijk - np.array(PLANT_MM), axis=1).reshape(grid.shape)
    blob = np.exp(-0.5 * (dist / 6.0) ** 2)
    points = ijk.T.reshape((3, *grid.shape)).astype(np.float32)  # an identity normalisation
    for n, sub in enumerate(subjects):
        group = "ALS" if n < n_per_group else "NC"
        sev = rng.uniform(0.5, 1.5) if group == "ALS" else 0.0
        row = {"participant_id": sub, "group": group, "age": float(rng.normal(55, 8)), "sex": "M" if n % 3 else "F"}
        if group == "ALS":
            row.update(alsfrs_r=float(np.round(44 - 6 * sev + rng.normal(0, 1))), umn=float(np.round(4 + 5 * sev)),
                       dd=float(rng.integers(6, 30)))
            row["dpr"] = (48 - row["alsfrs_r"]) / row["dd"]
        else:
            row.update(alsfrs_r=np.nan, umn=np.nan, dd=np.nan, dpr=np.nan)
        rows.append(row)
        chi = 0.02 * tpl.gm + 0.008 * _smooth_noise(rng, grid.shape) + 0.04 * sev * blob
        chi = np.where(tpl.brain_mask, chi, np.nan).astype(np.float32)
        if n == 3:  # this subject's chi does not cover a patch inside the brain
            chi[uncovered_patch(grid)] = np.nan
        gm = np.clip(tpl.gm * (1 - 0.25 * sev * blob) + 0.04 * _smooth_noise(rng, grid.shape), 0, 1).astype(np.float32)
        native = xr.Dataset({"t1w": (("t1_i", "t1_j", "t1_k"), rng.uniform(0, 1, (6, 6, 6)).astype(np.float32)),
                             "megre_mag": (("echo", "i", "j", "k"), rng.uniform(1, 2, (1, 8, 8, 8)).astype(np.float32))},
                            attrs={"subject": sub})
        store.write_node(f"native/{sub}", native, stage="ingest", digest=f"n{n}")
        aff = np.diag([3.0, 3.0, 3.0, 1.0])
        r2star = (20.0 + 150.0 * np.nan_to_num(chi)
                  + np.random.default_rng([n, 2]).normal(0, 0.5, chi.shape)).astype(np.float32)
        # the deep-grey table as the QSM stage reads it, here with the MNI grid as the subject's own
        nuclei = subject_nuclei({"chi": chi, "r2star": r2star}, {"chi": np.isfinite(chi), "r2star": np.isfinite(chi)},
                                grid.affine, gm, tpl, points, np.eye(4))
        q = xr.Dataset({"chi": (("i", "j", "k"), rng.normal(0, 0.02, (8, 8, 8)).astype(np.float32)),
                        "qsm_mask": (("i", "j", "k"), np.ones((8, 8, 8), np.uint8)),
                        "chi_mni": (("x", "y", "z"), chi),
                        # R2* follows the iron: the planted χ rise raises it too (about 150/s per ppm)
                        "r2star_mni": (("x", "y", "z"), r2star),  # its own noise: χ's draws unchanged
                        "nuclei": nuclei},
                       coords={ax: (ax, v) for ax, v in grid.coords().items()},
                       attrs={"subject": sub, "gre_affine": affine_attr(aff), "mni_affine": affine_attr(grid.affine)})
        store.write_node(f"derived/{sub}/qsm", q, stage="qsm", digest=f"q{n}", params={"inversion": "tv"},
                         seconds=None if n == 0 else 10.0 + n)  # the first as a store from before the times
        qc = 0.3 if sub == subjects[-1] else float(rng.uniform(0.8, 0.95))
        a = xr.Dataset({"gm_mod_s": (("x", "y", "z"), gm),
                        "gm_mod": (("x", "y", "z"), gm)},
                       coords={ax: (ax, v) for ax, v in grid.coords().items()},
                       attrs={"subject": sub, "tiv_ml": float(rng.normal(1450, 100)), "qc_gm_corr": qc,
                              "qc_dice": qc, "mni_affine": affine_attr(grid.affine)})
        store.write_node(f"derived/{sub}/anat", a, stage="anat", digest=f"a{n}", params={"syn_metric": "mattes"},
                         seconds=100.0 + n)
    table = pd.DataFrame(rows).set_index("participant_id")
    store.write_node("participants", participants_dataset(table), stage="ingest", digest="p")
    spec = load_spec().to_dict()
    spec["mni_voxel_size"] = VS
    spec["svc"] = [{"name": "thalamus_L", "region": "Thalamus_L", "radius_mm": 20},
                   {"name": "precentral_R", "region": "Precentral_R", "radius_mm": 20}]
    spec["roi"]["regions"] = [{"name": "sphere_R_putamen", "centre_mm": [24, 4, 2], "radius_mm": 8}]
    return subjects, spec
