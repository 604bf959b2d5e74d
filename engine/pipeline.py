"""The study pipeline: the participant level (per-subject stages mapped on Dask), the study
template's reduce, and the group level.

The work lives in one module per part: :mod:`.participant` (ingested subjects →
anatomy → QSM, one task per subject per stage), :mod:`.template` (the mean of the
first normalisation, when the spec asks for a study template), :mod:`.group`
(stack, fit, tables, ROIs, the deep-grey table and the clinical statistics) and
:mod:`.records` (what the stages record and the version that enters every
digest).  This module is their public API.
"""

from .group import MIN_RELIABLE_DF, ContrastSummary, GroupResult, group_design, run_group
from .participant import RunSummary, anat_stage, qsm_stage, run_participants
from .records import PIPELINE_VERSION, QC_MEASURES, stage_seconds
from .template import template_stage

__all__ = ["run_participants", "run_group", "RunSummary", "qsm_stage", "anat_stage", "template_stage", "stage_seconds",
           "group_design", "GroupResult", "ContrastSummary", "PIPELINE_VERSION", "QC_MEASURES", "MIN_RELIABLE_DF"]
