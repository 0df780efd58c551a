"""Core SST tracker: sessions, the bounded memory bank, frame selection, pre/post-processing.

Holds no model math: every learned weight lives inside the exported graphs (or the
PyTorch reference modules used for parity).
"""
