"""Triton model ``sst_tracker``: SST sessions (see sst.model_repository.orchestrator)."""

from sst.model_repository.orchestrator import TrackerModel as TritonPythonModel

__all__ = ["TritonPythonModel"]
