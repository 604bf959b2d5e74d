"""ferritin.cohort — the data: BIDS input, the Zarr/xarray cohort store, the simulator."""

from . import access  # noqa: F401  (registers the .cohort accessor)
from .access import open_cohort
from .errors import DatasetError, FerritinError, Problem, SubjectError
from .store import CohortStore

__all__ = ["open_cohort", "CohortStore", "DatasetError", "FerritinError", "Problem", "SubjectError"]
