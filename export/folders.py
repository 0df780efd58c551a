"""Where SST Serve keeps what it fetches and makes: the user's cache folder."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

__all__ = ["cache_root"]


def cache_root() -> Path:
    """``$SST_CACHE``, else the user's cache folder (``$XDG_CACHE_HOME/sst-serve`` or
    ``~/.cache/sst-serve`` on Linux, the platform's own elsewhere)."""
    return Path(os.environ.get("SST_CACHE") or platformdirs.user_cache_dir("sst-serve"))
