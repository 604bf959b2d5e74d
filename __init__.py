"""ferritin — a Dask-parallel batch engine for cohort studies of brain iron (QSM) and atrophy (VBM).

The installed package is ``ferritin`` with three sub-packages: ``ferritin.cohort`` (BIDS input,
the Zarr/xarray cohort store, the simulator), ``ferritin.engine`` (stage functions, the Dask
pipeline, cluster launch, the CLI) and ``ferritin.stats`` (GLM, SPM-compatible inference, clinical
statistics).  The names below are the entry points a Python user needs; they are imported on first
use so that ``import ferritin`` stays cheap.
"""

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("ferritin")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

_ENTRY_POINTS = {
    "open_cohort": "ferritin.cohort.access",
    "CohortStore": "ferritin.cohort.store",
    "load_spec": "ferritin.engine.spec",
    "StudySpec": "ferritin.engine.spec",
    "default_spec": "ferritin.engine.spec",
    "ingest": "ferritin.engine.ingest",
    "run_participants": "ferritin.engine.pipeline",
    "run_group": "ferritin.engine.pipeline",
    "dask_client": "ferritin.engine.cluster",
    "run_study": "ferritin.engine.study",
    "score_planted_effects": "ferritin.engine.recovery",
    "planted_effects": "ferritin.engine.recovery",
    "unplanted_results": "ferritin.engine.recovery",
}

__all__ = ["__version__", *_ENTRY_POINTS]


def __getattr__(name):
    if name in _ENTRY_POINTS:
        return getattr(import_module(_ENTRY_POINTS[name]), name)
    raise AttributeError(f"module 'ferritin' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
