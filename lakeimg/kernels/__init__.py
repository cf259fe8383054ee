"""Arrow-batch kernels: `Iterator[RecordBatch] -> Iterator[RecordBatch]`, exactly the function
type of Spark's `mapInArrow`, so both engines run the same per-file code (ingest.py, tiles.py,
transform.py). Kernels never import Spark or Delta."""
