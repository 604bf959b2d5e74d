"""ferritin.cohort — the data: BIDS input, the Zarr/xarray cohort store, the simulator."""

from .errors import DatasetError, FerritinError, Problem, SubjectError
from .store import CohortStore
from . import access  # noqa: F401  (registers the .cohort accessor)
from .access import open_cohort

__all__ = ["open_cohort", "CohortStore", "DatasetError", "FerritinError", "Problem", "SubjectError"]
