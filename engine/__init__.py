"""ferritin.engine — how work runs: stage functions, Dask pipeline, cluster launch, CLI."""
