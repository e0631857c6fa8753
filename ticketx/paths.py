"""Where ticketx keeps data and caches by default: one rule for the CLI and every plugin."""

from __future__ import annotations

import os
from pathlib import Path


def user_cache() -> Path:
    """$XDG_CACHE_HOME/ticketx, else ~/.cache/ticketx."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ticketx"


def default_data_root() -> Path:
    """Where datasets live when neither --data-root nor $TICKETX_DATA names a folder."""
    return user_cache() / "data"
