"""What the per-subject stages record with their outputs, and how a run reads it back.

``PIPELINE_VERSION`` enters every stage's digest: raised whenever a stage
computes something different from the same inputs and parameters, so that
stores made by an earlier version recompute it.
"""

from __future__ import annotations

import numpy as np

from ferritin.cohort.store import CohortStore

__all__ = ["PIPELINE_VERSION", "stage_seconds", "QC_MEASURES", "jsonable", "rounded_seconds", "finite_or_none"]

PIPELINE_VERSION = 9  # 2: the QSM quality step keeps deep sources; 3: affine brain to brain; 4: N4 2 levels;
#                       5: warped GM and WM stored (study template of tissue maps);
#                       6: the affine stored, for the study template's second pass on tissue maps;
#                       7: anatomy before QSM (T1 brain mask bounds the QSM mask; χ to MNI in the QSM node);
#                       8: brain extraction by a network and a searched affine start; R2* in the QSM node;
#                       9: ringing filtered only where evident; the χ reference; the deep-grey table


def stage_seconds(store: CohortStore, stage: str, subjects) -> list[float]:
    """The wall times recorded with ``derived/<sub>/<stage>`` of the subjects that have one."""
    return [rec["seconds"] for s in subjects
            if (rec := store.record(f"derived/{s}/{stage}")) is not None and "seconds" in rec]


def jsonable(value):
    """``value`` with numpy scalars and tuples turned into what JSON attributes hold."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def rounded_seconds(seconds: dict) -> dict:
    """Per-step wall times rounded to a tenth of a second, as the records keep them."""
    return {step: round(float(s), 1) for step, s in seconds.items()}


#: anatomy measures stored with every subject for quality control (see :mod:`.qc`)
QC_MEASURES = ("qc_t1_corr", "qc_brain_top_gap_mm", "gm_ml", "wm_ml", "csf_ml")


def finite_or_none(v):
    """A measure as a record attribute: a float, or None where it is missing or not finite."""
    return float(v) if v is not None and np.isfinite(v) else None
