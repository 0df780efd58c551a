"""Serving, independent of Triton: what a request may cost and how it is decoded
(:mod:`.limits`), the wire's tensor names and answers (:mod:`.wire`), the live sessions
and their requests through one scheduler (:mod:`.sessions`), the engine loop that drives
them on one thread (:mod:`.loop`), and giving memory back after large requests
(:mod:`.memory`). The Triton models in :mod:`sst.model_repository` are thin adapters
over these.

May import: the core :mod:`sst.tracker`, :mod:`sst.tracker.io` and :mod:`sst.export`;
never the apps, the client or the server (``tests/test_layout.py``).
"""
