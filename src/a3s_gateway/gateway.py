"""The gateway lifecycle (SPEC §13.2–§13.7): created → starting → running ⇄ reloading → stopping → stopped."""

from __future__ import annotations

import asyncio
import enum
import logging
import signal
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .config import compile as compile_config
from .errors import ConfigError, StartupError
from .proxy.server import HttpServer
from .runtime import Runtime

if TYPE_CHECKING:
    from .config.model import GatewayConfig

log = logging.getLogger("a3s_gateway")


class GatewayState(str, enum.Enum):
    """Lifecycle states."""

    CREATED = "created"
    STARTING = "starting"
    RUNNING = "running"
    RELOADING = "reloading"
    STOPPING = "stopping"
    STOPPED = "stopped"


class Gateway:
    """One gateway in the caller's event loop."""

    def __init__(self, config: GatewayConfig, *, clock: Callable[[], float] | None = None) -> None:
        self._config = config
        self.clock = clock or time.monotonic
        self.state = GatewayState.CREATED
        self.runtime: Runtime | None = None
        self._servers: dict[str, HttpServer] = {}
        self._stopped = asyncio.Event()
        self._shutdown_task: asyncio.Task[None] | None = None
        self._generation = 0
        self._last_reload: dict[str, Any] | None = None
        self._stop_requested = False

    @property
    def config(self) -> GatewayConfig:
        return self._config

    async def start(self) -> None:
        """Bind every listener and start serving; raises StartupError (state ``stopped``)."""
        if self.state != GatewayState.CREATED:
            raise StartupError(f"cannot start a gateway in state {self.state.value}")
        self.state = GatewayState.STARTING
        loop = asyncio.get_running_loop()
        try:
            compile_config.check_supported(self._config)
            self._generation = 1
            runtime = compile_config.build_runtime(self._config, loop, None, self._generation)
            for name, entry in runtime.entrypoints.items():
                ep = self._config.entrypoints[name]
                server = HttpServer(loop, entry, ep.host, ep.port)
                try:
                    await server.start()
                except OSError as e:
                    raise StartupError(f"entrypoint {name!r}: cannot listen on {ep.address}: {e.strerror or e}") from e
                self._servers[name] = server
        except BaseException:
            for server in self._servers.values():
                server.close_listener()
            self._servers.clear()
            self.state = GatewayState.STOPPED
            self._stopped.set()
            raise
        self.runtime = runtime
        self.state = GatewayState.RUNNING
        for name, server in self._servers.items():
            host, port = server.bound_address()
            log.info("entrypoint %s listening on %s:%d", name, host, port)
        if self._stop_requested:  # a signal arrived during start-up
            self._shutdown_task = asyncio.ensure_future(self._shutdown(None))

    async def reload(self, new_config: GatewayConfig) -> None:
        """Swap in a new configuration; on any error the running generation keeps serving."""
        if self.state != GatewayState.RUNNING:
            raise StartupError(f"cannot reload in state {self.state.value}")
        self.state = GatewayState.RELOADING
        loop = asyncio.get_running_loop()
        try:
            compile_config.check_supported(new_config)
            if set(new_config.entrypoints) != set(self._servers) or any(
                new_config.entrypoints[n].address != self._config.entrypoints[n].address for n in self._servers
            ):
                raise StartupError("not supported yet: adding, removing or moving entrypoints on reload")
            runtime = compile_config.build_runtime(new_config, loop, self.runtime, self._generation + 1)
        except (ConfigError, StartupError) as e:
            self.state = GatewayState.RUNNING
            self._last_reload = {"result": "failure", "error": str(e)}
            raise
        old = self.runtime
        self._generation += 1
        self.runtime = runtime
        for name, server in self._servers.items():
            server.entry = runtime.entrypoints[name]
        self._config = new_config
        if old is not None:
            compile_config.retire(old, runtime)
        self._last_reload = {"result": "success", "generation": self._generation}
        self.state = GatewayState.RUNNING

    async def shutdown(self, timeout: float | None = None) -> None:
        """Graceful stop (idempotent): stop accepting, let in-flight requests finish within ``timeout``."""
        if self._shutdown_task is None:
            self._shutdown_task = asyncio.ensure_future(self._shutdown(timeout))
        await asyncio.shield(self._shutdown_task)

    async def _shutdown(self, timeout: float | None) -> None:
        if self.state in (GatewayState.STOPPED, GatewayState.CREATED):
            self.state = GatewayState.STOPPED
            self._stopped.set()
            return
        self.state = GatewayState.STOPPING
        limit = self._config.shutdown_timeout if timeout is None else timeout
        await asyncio.gather(*(s.drain(limit) for s in self._servers.values()))
        if self.runtime is not None:
            for svc in self.runtime.services.values():
                for pool in svc.pools.values():
                    pool.close()
        self.state = GatewayState.STOPPED
        self._stopped.set()

    async def wait_for_shutdown(self) -> None:
        """Install SIGTERM/SIGINT handlers (a second signal stops at once) and wait until stopped."""
        loop = asyncio.get_running_loop()
        signals = 0
        tasks: list[asyncio.Future[None]] = []

        def on_signal() -> None:
            nonlocal signals
            if self.state in (GatewayState.CREATED, GatewayState.STARTING):
                self._stop_requested = True  # start() stops right after binding
                return
            signals += 1
            if signals == 1:
                log.info("shutting down (draining for up to %.0fs)", self._config.shutdown_timeout)
                tasks.append(asyncio.ensure_future(self.shutdown()))
            else:
                # a second signal: stop now (the drain deadline becomes zero)
                tasks.append(asyncio.ensure_future(self._shutdown(0)))

        def on_hangup() -> None:
            tasks.append(asyncio.ensure_future(self._reload_from_files()))

        installed = []
        for sig, handler in ((signal.SIGTERM, on_signal), (signal.SIGINT, on_signal), (signal.SIGHUP, on_hangup)):
            try:
                loop.add_signal_handler(sig, handler)
                installed.append(sig)
            except (NotImplementedError, RuntimeError, ValueError):
                pass
        try:
            await self._stopped.wait()
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)

    async def _reload_from_files(self) -> None:
        """SIGHUP: reload the main file; any error keeps the running generation (SPEC §13.5, §13.6)."""
        from .config.model import GatewayConfig

        path = self._config.path
        if not path:
            log.warning("SIGHUP: the configuration was not loaded from a file; nothing to reload")
            return
        try:
            await self.reload(GatewayConfig.from_file(path))
        except (ConfigError, StartupError) as e:
            log.error("reload of %s failed; still serving generation %d:\n%s", path, self._generation, e)
            return
        log.info("reloaded %s: generation %d", path, self._generation)

    def bound_addresses(self) -> dict[str, tuple[str, int]]:
        """Actual address per entrypoint (useful after binding port 0)."""
        return {name: server.bound_address() for name, server in self._servers.items()}

    def health(self) -> dict[str, Any]:
        """Body of ``/api/gateway/health`` (the admin listener itself comes with the observability issue)."""
        return {
            "status": "ok" if self.state in (GatewayState.RUNNING, GatewayState.RELOADING) else "unavailable",
            "state": self.state.value,
            "generation": self._generation,
            "last_reload": self._last_reload,
        }
