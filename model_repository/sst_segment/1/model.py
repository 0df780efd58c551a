"""Triton model ``sst_segment``: stateless SST requests (see sst.model_repository.forwarder)."""

from sst.model_repository.forwarder import SegmentModel as TritonPythonModel

__all__ = ["TritonPythonModel"]
