"""Where hf_missing caches what it builds (demo data, packaged encoders, REDEEM memory banks).

A bottom-level module: anything may import it, it imports nothing of hf_missing.
"""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "HF_MISSING_CACHE"


def default_cache_dir() -> Path:
    """``$HF_MISSING_CACHE`` or ``~/.cache/hf_missing``, the root of every hf_missing cache."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "hf_missing")
