"""The GPU benchmark: ``python -m sst.benchmarks.gpu`` (see :mod:`.harness`)."""
