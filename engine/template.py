"""The study template: the mean of the cohort's first normalisation, the reduce between two maps.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from ferritin.cohort import outcome
from ferritin.cohort.outcome import Status
from ferritin.cohort.store import CohortStore, affine_attr, digest_params
from ferritin.cohort.templates import load_template

from .cluster import subject_task
from .records import PIPELINE_VERSION
from .spec import StudySpec

__all__ = ["template_stage"]

@subject_task
def template_stage(store_path: str, spec: StudySpec, subjects: list[str], _after=()) -> outcome.Outcome:
    """The study template (DARTEL's idea, on ANTs): the mean of every subject's
    bias-corrected T1 brain (intensity-normalised per subject) and of its GM
    and WM posteriors after its first normalisation to MNI.  It lives on the
    MNI grid, so subjects registered to it are in MNI space; a reduce over the
    per-subject map."""
    store = CohortStore(store_path)
    ok = [s for s, res in zip(subjects, _after) if res.status != Status.FAILED]
    if len(ok) < 2:
        return outcome.failed("template", f"study template needs at least two normalised subjects, got {len(ok)}")
    digest = digest_params([store.record(f"derived/{s}/anat_init")["digest"] for s in ok], PIPELINE_VERSION)
    if store.is_current("template", digest):
        return outcome.skipped("template")
    names = {"t1": "t1_mni", "gm": "gm_mni", "wm": "wm_mni"}
    total = dict.fromkeys(names, 0.0)
    for s in ok:  # running sums: memory of a few volumes whatever the cohort size
        init = store.open_node(f"derived/{s}/anat_init")
        for name, var in names.items():
            total[name] = total[name] + init[var].values.astype(np.float64)
    vs = spec.mni_voxel_size
    grid = load_template(vs).grid
    means = {name: (("x", "y", "z"), (total[name] / len(ok)).astype(np.float32)) for name in names}
    ds = xr.Dataset(means, coords={ax: (ax, v, {"units": "mm"}) for ax, v in grid.coords().items()},
                    attrs={"subjects": ok, "mni_affine": affine_attr(grid.affine)})
    store.write_node("template", ds, stage="template", digest=digest, params={"n_subjects": len(ok)})
    return outcome.written("template")
