"""Job orchestration: listing sources, planning what changed, running kernels on an engine and
committing the results with their runs row (ingest.py, tiling.py, transform.py, summary.py,
export.py, listing.py)."""
