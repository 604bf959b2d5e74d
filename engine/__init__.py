"""ferritin.engine — how work runs: stage functions, Dask pipeline, cluster launch, CLI."""

__version__ = "0.1.0"
