"""Triton model ``sst_segment``: stateless SST requests (see sst.model_repository.orchestrator)."""

from sst.model_repository.orchestrator import SegmentModel as TritonPythonModel

__all__ = ["TritonPythonModel"]
