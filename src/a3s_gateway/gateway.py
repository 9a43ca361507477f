"""The gateway lifecycle (SPEC §13.2–§13.7): created → starting → running ⇄ reloading → stopping → stopped."""

from __future__ import annotations

import asyncio
import datetime
import enum
import logging
import signal
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .config import compile as compile_config
from .errors import ConfigError, StartupError
from .proxy.server import HttpServer
from .runtime import EntrypointRuntime, Runtime

if TYPE_CHECKING:
    from .config.model import EntrypointConfig, GatewayConfig
    from .providers.file import FileWatcher

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
        # listeners of entrypoints removed or re-addressed by a reload, draining in the background (SPEC §13.6 #3)
        self._retiring: dict[HttpServer, asyncio.Task[None]] = {}
        self._stopped = asyncio.Event()
        self._shutdown_task: asyncio.Task[None] | None = None
        self._reload_lock = asyncio.Lock()
        self._watcher: FileWatcher | None = None
        self._generation = 0
        self._last_reload: dict[str, Any] | None = None
        self._stop_requested = False
        self._stop_timeout: float | None = None
        #: completed reloads by result (the ``gateway_config_reloads_total`` metric reads these)
        self.reload_successes = 0
        self.reload_failures = 0

    @property
    def config(self) -> GatewayConfig:
        return self._config

    @property
    def generation(self) -> int:
        """The running configuration generation (1 after start, +1 per successful reload)."""
        return self._generation

    async def start(self) -> None:
        """Bind every listener and start serving; raises StartupError (state ``stopped``)."""
        if self.state != GatewayState.CREATED:
            raise StartupError(f"cannot start a gateway in state {self.state.value}")
        self.state = GatewayState.STARTING
        loop = asyncio.get_running_loop()
        try:
            compile_config.check_supported(self._config)
            runtime = compile_config.build_runtime(self._config, loop, None, 1)
            for name, entry in runtime.entrypoints.items():
                self._servers[name] = await self._bind(loop, self._config.entrypoints[name], entry)
        except BaseException:
            for server in self._servers.values():
                server.close_listener()
            self._servers.clear()
            self.state = GatewayState.STOPPED
            self._stopped.set()
            raise
        self._generation = 1
        self.runtime = runtime
        self.state = GatewayState.RUNNING
        for name, server in self._servers.items():
            host, port = server.bound_address()
            log.info("entrypoint %s listening on %s:%d", name, host, port)
        if self._stop_requested:  # a signal or shutdown() arrived during start-up
            self._shutdown_task = asyncio.ensure_future(self._shutdown(self._stop_timeout))
            return
        await self._sync_watcher()

    @staticmethod
    async def _bind(loop: asyncio.AbstractEventLoop, ep: EntrypointConfig, entry: EntrypointRuntime) -> HttpServer:
        """A listening HttpServer for ``ep`` (StartupError when the address cannot be bound)."""
        server = HttpServer(loop, entry, ep.host, ep.port)
        try:
            await server.start()
        except OSError as e:
            raise StartupError(f"entrypoint {ep.name!r}: cannot listen on {ep.address}: {e.strerror or e}") from e
        return server

    async def reload(self, new_config: GatewayConfig) -> None:
        """Swap in a new configuration (SPEC §13.6); on any error the running generation keeps serving.

        Everything is built first — the new Runtime and a listener for every added or re-addressed entrypoint —
        then one reference is swapped. Unchanged entrypoints keep their sockets; removed ones stop accepting and
        drain in the background (bounded by ``shutdown_timeout``). Reloads are serialised.
        """
        async with self._reload_lock:
            if self.state != GatewayState.RUNNING:
                raise StartupError(f"cannot reload in state {self.state.value}")
            self.state = GatewayState.RELOADING
            try:
                self._swap(*await self._prepare(new_config))
            except BaseException as e:
                if self.state == GatewayState.RELOADING:  # not when a shutdown started meanwhile
                    self.state = GatewayState.RUNNING
                if isinstance(e, (ConfigError, StartupError)):
                    self._record_reload(str(e))
                raise
            self.state = GatewayState.RUNNING
        self._record_reload(None)
        await self._sync_watcher()

    async def _prepare(self, new_config: GatewayConfig) -> tuple[GatewayConfig, Runtime, dict[str, HttpServer]]:
        """Build the next generation and bind its new listeners; nothing running is touched."""
        loop = asyncio.get_running_loop()
        compile_config.check_supported(new_config)
        runtime = compile_config.build_runtime(new_config, loop, self.runtime, self._generation + 1)
        added: dict[str, HttpServer] = {}
        try:
            for name, entry in runtime.entrypoints.items():
                ep = new_config.entrypoints[name]
                if not self._keeps_listener(name, ep):
                    added[name] = await self._bind(loop, ep, entry)
            if self.state != GatewayState.RELOADING:
                raise StartupError(f"reload abandoned: the gateway is {self.state.value}")
        except BaseException:
            for server in added.values():
                server.close_listener()
            raise
        return new_config, runtime, added

    def _keeps_listener(self, name: str, ep: EntrypointConfig) -> bool:
        """Whether entrypoint ``name`` is unchanged (same name, same address): its socket is kept."""
        if name not in self._servers:
            return False
        old = self._config.entrypoints[name]
        return (old.host, old.port, old.protocol) == (ep.host, ep.port, ep.protocol)

    def _swap(self, new_config: GatewayConfig, runtime: Runtime, added: dict[str, HttpServer]) -> None:
        """Make ``runtime`` the running generation (no await: nothing runs in between)."""
        old = self.runtime
        servers: dict[str, HttpServer] = {}
        for name, entry in runtime.entrypoints.items():
            server = added.get(name) or self._servers[name]
            server.entry = entry
            servers[name] = server
        gone = [(name, server) for name, server in self._servers.items() if servers.get(name) is not server]
        self._servers = servers
        self.runtime = runtime
        self._generation = runtime.generation
        self._config = new_config
        compile_config.activate(runtime)
        if old is not None:
            compile_config.retire(old, runtime)
        for name, server in gone:
            server.close_listener()
            self._retire_listener(name, server)
        for name, server in added.items():
            host, port = server.bound_address()
            log.info("entrypoint %s listening on %s:%d", name, host, port)

    def _retire_listener(self, name: str, server: HttpServer) -> None:
        """Drain a removed entrypoint's connections in the background, as a shutdown would (SPEC §13.5)."""
        timeout = self._config.shutdown_timeout
        log.info("entrypoint %s removed: stopped accepting, draining %d connection(s) for up to %.0fs",
                 name, len(server.connections), timeout)

        async def drain() -> None:
            await server.drain(timeout)
            log.info("entrypoint %s closed", name)

        task = asyncio.ensure_future(drain())
        self._retiring[server] = task
        task.add_done_callback(lambda _: self._retiring.pop(server, None))

    def _record_reload(self, error: str | None) -> None:
        if error is None:
            self.reload_successes += 1
        else:
            self.reload_failures += 1
        stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")
        self._last_reload = {"success": error is None, "timestamp": stamp.replace("+00:00", "Z"), "error": error}

    async def _sync_watcher(self) -> None:
        """Start, retarget or stop the file watcher to match the running configuration (SPEC §12.2)."""
        config = self._config
        file = config.providers.file
        want = file is not None and file.watch and config.path is not None and self.state == GatewayState.RUNNING
        if not want:
            if file is not None and file.watch and config.path is None:
                log.warning("providers.file.watch: the configuration was not loaded from a file; nothing to watch")
            if self._watcher is not None:
                watcher, self._watcher = self._watcher, None
                await watcher.close()
            return
        assert file is not None and config.path is not None
        if self._watcher is not None:
            self._watcher.retarget(config.path, file.directory)
            return
        from .providers.file import FileWatcher

        self._watcher = FileWatcher(config.path, file.directory, self._reload_from_files)
        self._watcher.start()
        await asyncio.sleep(0)  # let the watch task install its OS watches before start() returns

    async def shutdown(self, timeout: float | None = None) -> None:
        """Graceful stop (idempotent): stop accepting, let in-flight requests finish within ``timeout``."""
        if self.state == GatewayState.STARTING:
            # start() is binding: it stops right after (or fails and ends stopped)
            self._stop_requested = True
            self._stop_timeout = timeout
            await self._stopped.wait()
            return
        if self._shutdown_task is None:
            self._shutdown_task = asyncio.ensure_future(self._shutdown(timeout))
        await asyncio.shield(self._shutdown_task)

    async def _shutdown(self, timeout: float | None) -> None:
        if self.state in (GatewayState.STOPPED, GatewayState.CREATED):
            self.state = GatewayState.STOPPED
            self._stopped.set()
            return
        self.state = GatewayState.STOPPING
        if self._watcher is not None:
            watcher, self._watcher = self._watcher, None
            await watcher.close()
        limit = self._config.shutdown_timeout if timeout is None else timeout
        retiring = dict(self._retiring)
        # listeners already retired by a reload drain within the shutdown's limit too
        await asyncio.gather(*(s.drain(limit) for s in [*self._servers.values(), *retiring]))
        for task in retiring.values():
            task.cancel()
        await asyncio.gather(*retiring.values(), return_exceptions=True)
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
        """SIGHUP or a file change: reload the main file (and its directory); errors keep the running generation."""
        from .config.model import GatewayConfig

        path = self._config.path
        if not path:
            log.warning("reload: the configuration was not loaded from a file; nothing to reload")
            return
        if self.state not in (GatewayState.RUNNING, GatewayState.RELOADING):
            return
        try:
            new_config = GatewayConfig.from_file(path)
        except ConfigError as e:
            self._record_reload(str(e))
            log.error("reload of %s failed; still serving generation %d:\n%s", path, self._generation, e)
            return
        try:
            await self.reload(new_config)
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
            "active_connections": sum(len(s.connections) for s in [*self._servers.values(), *self._retiring]),
            "config_generation": self._generation,
            "last_reload": self._last_reload,
        }
