"""``python -m sst.benchmarks.gpu``: the GPU path measured against sam2 (see harness)."""

from sst.benchmarks.gpu.harness import main

raise SystemExit(main())
