"""``ws-mux`` (SPEC §6.16, §9.4): the last middleware of a router whose WebSocket upgrades the gateway terminates
itself and attaches to the router's hub of named channels (``wsmux/hub.py``). Requests that are not upgrades
pass through unchanged."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from ..middleware.chain import Middleware
from .hub import Hub, MuxConfig


class WsMux(Middleware):
    kind = "ws-mux"

    def __init__(self, name: str, router: str, params: Mapping[str, Any]) -> None:
        super().__init__(name, router)
        self.cfg = MuxConfig.from_params(params)
        self.hub: Hub | None = None
        self.service: Any = None  # the router's service: where the hub's backend link goes

    def hub_for(self, loop: asyncio.AbstractEventLoop, service: Any) -> Hub:
        """The router's hub, created with the first upgrade (one per router; kept across reloads with the
        middleware's configuration)."""
        self.service = service
        hub = self.hub
        if hub is None:
            hub = self.hub = Hub(self.router, self.cfg, loop, backend_url=self._backend_url)
        return hub

    def _backend_url(self) -> str | None:
        service = self.service
        backend = service.balancer.pick() if service is not None else None
        if backend is None:
            return None
        host = f"[{backend.host}]" if ":" in backend.host else backend.host
        return f"ws://{host}:{backend.port}{backend.base_path}{self.cfg.upstream_path}"

    async def close(self) -> None:
        hub, self.hub = self.hub, None
        if hub is not None:
            await hub.close()
