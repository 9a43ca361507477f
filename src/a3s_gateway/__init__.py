"""a3s-gateway: the traffic layer for AI-native services.

Public API: :class:`Gateway`, :class:`GatewayConfig`, :class:`GatewayState`, the error classes and ``__version__``.
Heavy modules are imported on first use so ``import a3s_gateway`` stays fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._version import __version__
from .errors import ConfigError, GatewayError, Issue, ProtocolError, StartupError

if TYPE_CHECKING:
    from .config.model import GatewayConfig
    from .gateway import Gateway, GatewayState

__all__ = [
    "ConfigError",
    "Gateway",
    "GatewayConfig",
    "GatewayError",
    "GatewayState",
    "Issue",
    "ProtocolError",
    "StartupError",
    "__version__",
]


def __getattr__(name: str) -> Any:
    if name in ("Gateway", "GatewayState"):
        from . import gateway

        return getattr(gateway, name)
    if name == "GatewayConfig":
        from .config.model import GatewayConfig

        return GatewayConfig
    raise AttributeError(name)
