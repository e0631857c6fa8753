"""ticketx: find lottery tickets and transfer them, every run recorded in MLflow.

The Python API (docs/API.md): `ticketx.find`, `ticketx.transfer`, `ticketx.load_ticket`, `ticketx.Result`;
imported when first used, so that `import ticketx` (and the `ticketx` command) starts fast.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["Result", "find", "load_ticket", "transfer"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import api
        return getattr(api, name)
    raise AttributeError(f"module 'ticketx' has no attribute {name!r}")
