"""The gateway lifecycle (SPEC §13.2–§13.7): created → starting → running ⇄ reloading → stopping → stopped."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import enum
import logging
import platform
import signal
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from ._aio import cancel_and_wait
from ._version import __version__
from .config import compile as compile_config
from .config.model import AdminConfig
from .errors import ConfigError, StartupError
from .middleware import catalog
from .middleware.chain import Chain
from .observability import metrics as metrics_mod
from .observability.access_log import AccessLog
from .observability.admin import AdminServer
from .observability.tracing import Tracer
from .proxy.listeners import TcpListener, UdpListener
from .proxy.server import ConnectionRejections, HttpServer
from .proxy.tls import CertStore, TlsError, challenge_contexts
from .runtime import Runtime, State, watch_rollout
from .service.revision import RevisionSplit

if TYPE_CHECKING:
    from .acme.manager import AcmeManager
    from .config.model import AccessLogConfig, EntrypointConfig, GatewayConfig, PemCertificate
    from .providers.file import FileWatcher
    from .providers.hub import Providers

log = logging.getLogger("a3s_gateway")


class GatewayState(str, enum.Enum):
    """Lifecycle states."""

    CREATED = "created"
    STARTING = "starting"
    RUNNING = "running"
    RELOADING = "reloading"
    STOPPING = "stopping"
    STOPPED = "stopped"


class Peers(Protocol):
    """The worker processes a supervisor's gateway ships each generation to (SPEC §13.4): prepare, then commit."""

    async def prepare(self, config: GatewayConfig, runtime: Runtime) -> None:
        """Every worker builds the generation of ``runtime`` (the supervisor's build) and binds its new listeners;
        raises StartupError when one cannot."""
        ...

    async def commit(self, generation: int) -> None:
        """Every worker swaps to the prepared generation (a worker that fails to is replaced); returns when all
        answered, so the supervisor reports the generation the workers serve."""
        ...

    async def abort(self, generation: int) -> None:
        """Every worker drops the prepared generation."""
        ...

    async def publish_acme(self, state: dict[str, Any]) -> None:
        """Every worker serves the ACME state (:meth:`Gateway.acme_state`) before this returns."""
        ...


class RemoteView(Protocol):
    """What a supervisor's gateway shows of its workers' data plane (the admin API, SPEC §13.4)."""

    def total_requests(self) -> int: ...

    def connection_counts(self) -> dict[str, int]: ...

    def workers_view(self) -> list[dict[str, Any]]: ...


#: process roles (SPEC §13.4): one process serving everything; the supervisor of worker processes (control plane,
#: binds no entrypoint); a worker (data plane: binds every entrypoint, runs no health check, executor or rollout)
SINGLE, SUPERVISOR, WORKER = "single", "supervisor", "worker"


def _override_admin(config: GatewayConfig, admin: str | None) -> GatewayConfig:
    """``config`` with the admin listener replaced by ``admin`` (``"off"`` or an address; None = as configured)."""
    if admin is None:
        return config
    if admin == "off":
        return dataclasses.replace(config, admin=dataclasses.replace(config.admin, enabled=False))
    from .config.schema.checks import parse_address

    parsed = parse_address(admin)
    if parsed is None:
        raise StartupError(f"invalid admin address {admin!r}: use host:port, e.g. 127.0.0.1:9901")
    host, port = parsed
    return dataclasses.replace(config, admin=AdminConfig(True, admin, host, port, config.admin.middlewares))


class Gateway:
    """One gateway in the caller's event loop.

    ``admin`` overrides the configuration's admin listener for this gateway and every reload: an address, or
    ``"off"`` (the CLI's ``--admin``).
    """

    def __init__(
        self, config: GatewayConfig, *, clock: Callable[[], float] | None = None, admin: str | None = None,
        role: str = SINGLE, generation: int = 1, processes_decided: bool = False,
    ) -> None:
        if role not in (SINGLE, SUPERVISOR, WORKER):
            raise ValueError(f"unknown role {role!r}")
        #: single, supervisor or worker (SPEC §13.4)
        self.role = role
        #: a supervisor's worker processes (set by workers.supervisor)
        self.peers: Peers | None = None
        #: a supervisor's view of its workers' counters (None: this process serves the traffic itself)
        self.remote: RemoteView | None = None
        #: called with each generation once it runs (a worker points its scale targets at the supervisor)
        self.on_generation: Callable[[Runtime], None] | None = None
        #: called with each generation right after it is built, before anything serves it (a worker points its
        #: counters and rate limits at the shared segment)
        self.on_build: Callable[[Runtime], None] | None = None
        self._first_generation = generation
        #: the caller chose the process model (the CLI: ``workers`` or ``--workers``): no warning about ``workers``
        self._processes_decided = processes_decided or role != SINGLE
        self._pending: tuple[GatewayConfig, Runtime, dict[str, HttpServer], _Observers] | None = None
        self._admin_override = admin
        self._config = _override_admin(config, admin)
        #: the configuration as loaded (the file), before provider items are merged in (SPEC §12.1)
        self._file_config = self._config
        self.clock = clock or time.monotonic
        self.state = GatewayState.CREATED
        self.runtime: Runtime | None = None
        self._servers: dict[str, Any] = {}  # HttpServer, TcpListener or UdpListener by entrypoint name
        # HTTP connections closed at max_connections by entrypoint name, kept across reloads (a counter metric)
        self._rejections: dict[str, ConnectionRejections] = {}
        # listeners of entrypoints removed or re-addressed by a reload, draining in the background (SPEC §13.6 #3)
        self._retiring: dict[HttpServer, asyncio.Task[None]] = {}
        self._stopped = asyncio.Event()
        self._closing: set[asyncio.Future[Any]] = set()
        self._rollouts: dict[str, tuple[Any, asyncio.Future[None]]] = {}  # rollout evaluation tasks by service (§8.7)
        self._shutdown_task: asyncio.Task[None] | None = None
        self._reload_lock = asyncio.Lock()
        self._watcher: FileWatcher | None = None
        self._providers: Providers | None = None
        self._generation = 0
        self._last_reload: dict[str, Any] | None = None
        self._stop_requested = False
        self._stop_timeout: float | None = None
        #: completed reloads by result (the ``gateway_config_reloads_total`` metric reads these)
        self.reload_successes = 0
        self.reload_failures = 0
        #: wall-clock time of the last successful start or reload
        self.last_success_time = 0.0
        self._started_at = 0.0
        self._access_log: AccessLog | None = None
        self._tracer: Tracer | None = None
        self._admin: AdminServer | None = None
        self._version: dict[str, Any] | None = None
        #: the live objects carried across reloads (pools, health, middleware instances, scale targets, ...)
        self.live = State()
        #: the ACME manager (SPEC §10.4) of a single process or a supervisor while an entrypoint uses acme
        self.acme: AcmeManager | None = None
        #: ACME-issued (cert_file, key_file) pairs per entrypoint, applied to its CertStore (also when rebound)
        self._issued: dict[str, list[tuple[str, str]]] = {}
        self.registry = metrics_mod.make_registry(self)

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
        config = self._config
        if not self._processes_decided and config.workers != 1:
            log.warning("workers = %s: this gateway runs in the caller's event loop, in one process; worker processes "
                        "are started by the a3s-gateway command", config.workers)
        try:
            compile_config.check_supported(config)
            self._access_log = self._open_access_log(config.access_log, None)
            self._tracer = Tracer(config.tracing)
            runtime = compile_config.build_runtime(config, loop, self.live, self._first_generation,
                                                   access_log=self._access_log, tracer=self._tracer)
            if self.on_build is not None:
                self.on_build(runtime)
            self._sync_acme(config)  # stored certificates are installed before the listeners open
            if self.role != SUPERVISOR:  # a supervisor's workers bind the entrypoints
                for name, entry in _entries(runtime).items():
                    self._servers[name] = await self._bind(loop, config.entrypoints[name], entry,
                                                           config.provided_certificates)
            admin_chain, admin_mws = self._build_admin_chain(config)
            self._admin = await self._bind_admin(loop, config.admin)
            if self._admin is not None:
                self._admin.chain = admin_chain
        except BaseException:
            for server in self._servers.values():
                server.close_listener()
            self._servers.clear()
            self.acme = None  # not started yet: nothing runs
            if self._access_log is not None:
                await self._access_log.close()
                self._access_log = None
            self._tracer = None
            self.state = GatewayState.STOPPED
            self._stopped.set()
            raise
        self._tracer.start()
        self._generation = runtime.generation
        self.live.carry(None, runtime)
        self.live.carry_admin(admin_mws)
        self.runtime = runtime
        self._start_health(runtime)
        self._started_at = self.clock()
        self.last_success_time = time.time()
        self.state = GatewayState.RUNNING
        if self.role != SUPERVISOR:  # a supervisor starts it once its workers listen (workers.supervisor)
            self.start_acme()
        for name, server in self._servers.items():
            host, port = server.bound_address()
            log.info("entrypoint %s listening on %s:%d", name, host, port)
        if self._admin is not None:
            host, port = self._admin.bound_address()
            log.info("admin API listening on %s:%d", host, port)
            self._warn_if_admin_exposed(config.admin.middlewares)
        if self._stop_requested:  # a signal or shutdown() arrived during start-up
            self._shutdown_task = asyncio.ensure_future(self._shutdown(self._stop_timeout))
            return
        await self._sync_watcher()
        await self._sync_providers()

    async def _bind(self, loop: asyncio.AbstractEventLoop, ep: EntrypointConfig, entry: Any,
                    provided: tuple[PemCertificate, ...] = ()) -> Any:
        """A listening HttpServer / TcpListener / UdpListener for ``ep`` (StartupError when it cannot bind);
        ``provided`` are the provider certificates a TLS entrypoint serves too (SPEC §10.2, §12.5)."""
        certs: CertStore | None = None
        if ep.tls is not None:
            try:
                # HTTP: ALPN h2 + http/1.1 (http/1.1 only with http2 = false); TCP: no ALPN offered
                certs = CertStore(ep.tls)
            except TlsError as e:
                raise StartupError(f"entrypoint {ep.name!r}: {e}") from e
            certs.set_provided(provided)
        ssl_ctx = certs.context if certs is not None else None
        server: Any
        if ep.protocol == "tcp":
            server = TcpListener(loop, entry, ep.host, ep.port, ssl=ssl_ctx, sni_of=CertStore.server_name,
                                 certs=certs)
        elif ep.protocol == "udp":
            server = UdpListener(loop, entry, ep.host, ep.port)
        else:
            rejections = self._rejections.get(ep.name)
            if rejections is None:
                rejections = self._rejections[ep.name] = ConnectionRejections(ep.name)
            server = HttpServer(loop, entry, ep.host, ep.port, ssl=ssl_ctx, rejections=rejections)
        try:
            await server.start()
        except OSError as e:
            raise StartupError(f"entrypoint {ep.name!r}: cannot listen on {ep.address}: {e.strerror or e}") from e
        if certs is not None:
            if ep.name in self._issued:
                certs.set_issued(self._issued[ep.name])
            if self.live.acme_alpn and ep.tls is not None and ep.tls.acme:
                # a TLS-ALPN-01 order is waiting for validation (a worker started meanwhile, a re-bound entrypoint)
                certs.set_challenges(challenge_contexts(self.live.acme_alpn))
            server.certs = certs
            server.cert_watch = asyncio.ensure_future(certs.watch())  # §10.3: changed files every 5 s
        return server

    async def _bind_admin(self, loop: asyncio.AbstractEventLoop, admin: AdminConfig) -> AdminServer | None:
        """A listening admin server, or None when disabled (StartupError when the address cannot be bound)."""
        if not admin.enabled:
            return None
        server = AdminServer(loop, admin.host, admin.port, self)
        try:
            await server.start()
        except OSError as e:
            raise StartupError(
                f"admin: cannot listen on {admin.address}: {e.strerror or e} "
                '(move it with admin { address = "..." }, or --admin off)'
            ) from e
        return server

    def _warn_if_admin_exposed(self, middlewares: tuple[str, ...]) -> None:
        """SPEC §3.6: an admin API reachable from other hosts with no admin middlewares gets a warning."""
        admin = self._admin
        if admin is None or middlewares or not admin.exposed():
            return
        host, port = admin.bound_address()
        log.warning(
            "admin API on %s:%d is reachable from other hosts and has no admin middlewares: anyone who can connect "
            "reads the routes, services, backends and configuration; add admin { middlewares = [...] } "
            "(basic-auth, ip-allow) or listen on 127.0.0.1", host, port,
        )

    def _build_admin_chain(self, config: GatewayConfig) -> tuple[Chain | None, dict[tuple[str, str], Any]]:
        """The admin listener's middlewares (SPEC §3.6), instances reused while unchanged."""
        out: dict[tuple[str, str], Any] = {}
        chain = catalog.compile_chain("@admin", config.admin.middlewares, config.middlewares,
                                      self.live.admin_middlewares, out)
        return chain, out

    def _open_access_log(self, cfg: AccessLogConfig | None, current: AccessLog | None) -> AccessLog | None:
        """The access log for ``cfg``: the current one when its path is unchanged, else a new started one."""
        if cfg is None:
            return None
        if current is not None and current.path == cfg.path:
            current.flush_interval = cfg.flush_interval
            return current
        log_ = AccessLog(cfg.path, cfg.flush_interval)
        try:
            log_.start()
        except OSError as e:
            raise StartupError(f"access_log: cannot open {cfg.path}: {e.strerror or e}") from e
        return log_

    @property
    def reload_lock(self) -> asyncio.Lock:
        """Held while a generation is built and swapped in (a supervisor holds it while it starts workers)."""
        return self._reload_lock

    async def reload(self, new_config: GatewayConfig) -> None:
        """Swap in a new configuration (SPEC §13.6); on any error the running generation keeps serving.

        Everything is built first — the new Runtime and a listener for every added or re-addressed entrypoint —
        then one reference is swapped. Unchanged entrypoints keep their sockets; removed ones stop accepting and
        drain in the background (bounded by ``shutdown_timeout``). Reloads are serialised.

        ``new_config`` is the file configuration: the items of the running providers are merged in (SPEC §12.1).
        """
        await self._reload(new_config, provider_update=False)

    async def _reload(self, new_config: GatewayConfig, *, provider_update: bool) -> None:
        """:meth:`reload`; a provider update whose merged configuration is the running one builds nothing."""
        base = _override_admin(new_config, self._admin_override)
        async with self._reload_lock:
            if self.state != GatewayState.RUNNING:
                raise StartupError(f"cannot reload in state {self.state.value}")
            new_config = self._merge_providers(base)
            if provider_update and new_config == self._config:
                return
            self.state = GatewayState.RELOADING
            try:
                prepared = await self._prepare(new_config)
                peers = self.peers
                if peers is not None:
                    generation = prepared[1].generation
                    try:
                        await peers.prepare(prepared[0], prepared[1])
                        if self.state != GatewayState.RELOADING:
                            raise StartupError(f"reload abandoned: the gateway is {self.state.value}")
                    except BaseException:
                        await peers.abort(generation)
                        await self._unprepare(prepared)
                        raise
                if peers is not None:
                    await peers.commit(prepared[1].generation)
                self._swap(*prepared)
            except BaseException as e:
                if self.state == GatewayState.RELOADING:  # not when a shutdown started meanwhile
                    self.state = GatewayState.RUNNING
                if isinstance(e, (ConfigError, StartupError)):
                    self._record_reload(str(e))
                raise
            self._file_config = base
            self.state = GatewayState.RUNNING
        self._record_reload(None)
        await self._sync_watcher()
        await self._sync_providers()

    def _merge_providers(self, base: GatewayConfig) -> GatewayConfig:
        """``base`` plus what the running providers of its ``providers`` block contribute (SPEC §12.1)."""
        providers = self._providers
        if providers is None:
            return base
        contributions = providers.contributions(base)
        if not contributions:
            return base
        from .providers.merge import merge

        merged, warnings = merge(base, contributions)
        providers.warn(warnings)
        return merged

    async def _sync_providers(self) -> None:
        """Start, keep or stop the discovery providers to match the file configuration (SPEC §12); a worker runs
        none (its supervisor does, and ships every generation)."""
        from .providers.hub import Providers, wanted

        want = (bool(wanted(self._file_config.providers)) and self.state == GatewayState.RUNNING
                and self.role != WORKER)
        if not want:
            if self._providers is not None:
                old, self._providers = self._providers, None
                await old.close()
            return
        if self._providers is None:
            self._providers = Providers(self._reload_from_providers)
        await self._providers.sync(self._file_config.providers)

    async def _reload_from_providers(self) -> None:
        """A provider's items changed (debounced): merge them into the file configuration and reload."""
        if self.state not in (GatewayState.RUNNING, GatewayState.RELOADING):
            return
        try:
            await self._reload(self._file_config, provider_update=True)
        except (ConfigError, StartupError) as e:
            log.error("reload after a provider change failed; still serving generation %d:\n%s", self._generation, e)
            return
        log.info("providers changed: generation %d", self._generation)

    async def prepare_generation(self, new_config: GatewayConfig, generation: int) -> None:
        """A worker's half of a reload (SPEC §13.4): build ``generation`` and bind its new listeners, then wait for
        :meth:`commit_generation` or :meth:`abort_generation`. Raises StartupError/ConfigError (nothing changed)."""
        new_config = _override_admin(new_config, self._admin_override)
        async with self._reload_lock:
            if self.state != GatewayState.RUNNING or self._pending is not None:
                raise StartupError(f"cannot reload in state {self.state.value}")
            self.state = GatewayState.RELOADING
            try:
                self._pending = await self._prepare(new_config, generation)
            except BaseException:
                if self.state == GatewayState.RELOADING:
                    self.state = GatewayState.RUNNING
                raise

    def commit_generation(self, generation: int) -> None:
        """Swap in the generation :meth:`prepare_generation` built."""
        pending, self._pending = self._pending, None
        if pending is None or pending[1].generation != generation:
            raise StartupError(f"generation {generation} was not prepared")
        if self.state != GatewayState.RELOADING:
            self._background(self._unprepare(pending))
            raise StartupError(f"cannot commit in state {self.state.value}")
        self._swap(*pending)
        self.state = GatewayState.RUNNING
        self._record_reload(None)

    async def abort_generation(self, generation: int) -> None:
        """Drop the generation :meth:`prepare_generation` built (another worker could not build it)."""
        pending = self._pending
        if pending is None or pending[1].generation != generation:
            return
        self._pending = None
        await self._unprepare(pending)
        if self.state == GatewayState.RELOADING:
            self.state = GatewayState.RUNNING

    async def _unprepare(self, prepared: tuple[GatewayConfig, Runtime, dict[str, HttpServer], _Observers]) -> None:
        """Undo what :meth:`_prepare` opened for a generation that will not run."""
        _, _, added, observers = prepared
        for server in added.values():
            server.close_listener()
        if observers.access_log is not None and observers.access_log is not self._access_log:
            await observers.access_log.close()
        if observers.admin_changed and observers.admin is not None:
            await observers.admin.close()

    async def _prepare(self, new_config: GatewayConfig, generation: int | None = None
                       ) -> tuple[GatewayConfig, Runtime, dict[str, HttpServer], _Observers]:
        """Build the next generation and bind its new listeners; nothing running is touched."""
        loop = asyncio.get_running_loop()
        compile_config.check_supported(new_config)
        old = self._config
        if new_config.workers != old.workers and self.role != WORKER and self._processes_decided:
            log.warning("workers changed from %s to %s: a reload keeps the running processes; restart to apply",
                        old.workers, new_config.workers)
        access_log = self._open_access_log(new_config.access_log, self._access_log)
        tracer = self._tracer if self._tracer is not None and old.tracing == new_config.tracing else None
        new_tracer = tracer or Tracer(new_config.tracing)
        admin_chain, admin_mws = self._build_admin_chain(new_config)
        observers = _Observers(access_log, new_tracer, self._admin, False, admin_chain, admin_mws)
        added: dict[str, HttpServer] = {}
        try:
            runtime = compile_config.build_runtime(new_config, loop, self.live,
                                                   self._generation + 1 if generation is None else generation,
                                                   access_log=access_log, tracer=new_tracer)
            if self.on_build is not None:
                self.on_build(runtime)
            for name, entry in _entries(runtime).items():
                ep = new_config.entrypoints[name]
                if self.role != SUPERVISOR and not self._keeps_listener(name, ep):
                    added[name] = await self._bind(loop, ep, entry, new_config.provided_certificates)
            a_old, a_new = old.admin, new_config.admin
            if (a_old.enabled, a_old.host, a_old.port) != (a_new.enabled, a_new.host, a_new.port):
                observers.admin = await self._bind_admin(loop, a_new)
                observers.admin_changed = True
            if self.state != GatewayState.RELOADING:
                raise StartupError(f"reload abandoned: the gateway is {self.state.value}")
        except BaseException:
            for server in added.values():
                server.close_listener()
            if access_log is not None and access_log is not self._access_log:
                await access_log.close()
            if observers.admin_changed and observers.admin is not None:
                await observers.admin.close()
            raise
        return new_config, runtime, added, observers

    def _keeps_listener(self, name: str, ep: EntrypointConfig) -> bool:
        """Whether entrypoint ``name`` is unchanged (same name, same address): its socket is kept."""
        if name not in self._servers:
            return False
        old = self._config.entrypoints[name]
        # a changed tls block binds a new listener (SO_REUSEPORT) with the new certificates; the old one drains
        return (old.host, old.port, old.protocol, old.tls) == (ep.host, ep.port, ep.protocol, ep.tls)

    def _swap(
        self, new_config: GatewayConfig, runtime: Runtime, added: dict[str, HttpServer], observers: _Observers
    ) -> None:
        """Make ``runtime`` the running generation (no await: nothing runs in between)."""
        old = self.runtime
        if observers.access_log is not self._access_log and self._access_log is not None:
            self._background(self._access_log.close())
        self._access_log = observers.access_log
        if observers.tracer is not self._tracer:
            if self._tracer is not None:
                self._background(self._tracer.close())
            observers.tracer.start()
            self._tracer = observers.tracer
        if observers.admin_changed:
            if self._admin is not None:
                self._background(self._admin.close())
            self._admin = observers.admin
            if self._admin is not None:
                host, port = self._admin.bound_address()
                log.info("admin API listening on %s:%d", host, port)
        if self._admin is not None:
            self._admin.chain = observers.admin_chain
            if observers.admin_changed or new_config.admin.middlewares != self._config.admin.middlewares:
                self._warn_if_admin_exposed(new_config.admin.middlewares)
        for mw in self.live.carry_admin(observers.admin_mws):
            self._background(mw.close())
        servers: dict[str, Any] = {}
        for name, entry in _entries(runtime).items():
            server = added.get(name) or self._servers.get(name)
            if server is None:  # a supervisor binds no entrypoint
                continue
            server.entry = entry
            servers[name] = server
            if getattr(server, "certs", None) is not None:  # provider certificates follow every generation
                server.certs.set_provided(new_config.provided_certificates)
        gone = [(name, server) for name, server in self._servers.items() if servers.get(name) is not server]
        self._servers = servers
        retired = self.live.carry(old, runtime)
        self.runtime = runtime
        self._generation = runtime.generation
        self._config = new_config
        self._background(retired.close())
        self._start_health(runtime)
        for name, server in gone:
            server.close_listener()
            self._retire_listener(name, server)
        for name, server in added.items():
            host, port = server.bound_address()
            log.info("entrypoint %s listening on %s:%d", name, host, port)
            if getattr(server, "certs", None) is not None and name in self._issued:
                server.certs.set_issued(self._issued[name])  # issued while the listener was being prepared
        self._sync_acme(new_config)
        if self.acme is not None:
            self.acme.start()

    # -- ACME (SPEC §10.4) ---------------------------------------------------------------------------------------
    def _sync_acme(self, config: GatewayConfig) -> None:
        """Create, reconfigure or stop the ACME manager for ``config`` (never in a worker: its supervisor runs it)."""
        if self.role == WORKER:
            return
        wanted = any(ep.tls is not None and ep.tls.acme for ep in config.entrypoints.values())
        if not wanted:
            if self.acme is not None:
                manager, self.acme = self.acme, None
                self._background(manager.close())
            return
        if self.acme is None:
            from .acme.manager import AcmeManager

            self.acme = AcmeManager(self, self.live.acme_tokens, self.live.acme_alpn)
        self.acme.configure(config)

    def start_acme(self) -> None:
        """Start ordering the missing certificates in the background (the listeners that answer HTTP-01 and serve
        the certificates run already)."""
        if self.acme is not None:
            self.acme.start()

    def install_certificates(self, entrypoint: str, pairs: list[tuple[str, str]]) -> None:
        """Serve the ACME-issued ``pairs`` on ``entrypoint`` for new handshakes (acme.manager.AcmeHost)."""
        self._issued[entrypoint] = list(pairs)
        server = self._servers.get(entrypoint)
        if server is not None and getattr(server, "certs", None) is not None:
            server.certs.set_issued(self._issued[entrypoint])

    async def publish_challenges(self) -> None:
        """The HTTP-01 answers reach every worker before an order asks the CA to validate (acme.manager.AcmeHost);
        a single process serves ``live.acme_tokens`` directly."""
        self._install_alpn_challenges()
        if self.peers is not None:
            await self.peers.publish_acme(self.acme_state())

    def acme_state(self) -> dict[str, Any]:
        """What a worker needs of ACME: the pending HTTP-01 answers and the issued certificates per entrypoint."""
        return {"tokens": dict(self.live.acme_tokens), "alpn": dict(self.live.acme_alpn),
                "issued": {k: list(v) for k, v in self._issued.items()}}

    def apply_acme(self, state: dict[str, Any]) -> None:
        """A worker takes its supervisor's :meth:`acme_state`."""
        tokens = self.live.acme_tokens
        new = state.get("tokens", {})
        if tokens != new:
            tokens.clear()
            tokens.update(new)
        alpn = self.live.acme_alpn
        new_alpn = state.get("alpn", {})
        if alpn != new_alpn:
            alpn.clear()
            alpn.update(new_alpn)
            self._install_alpn_challenges()
        for entrypoint, pairs in state.get("issued", {}).items():
            if self._issued.get(entrypoint) != pairs:
                self.install_certificates(entrypoint, pairs)

    def _install_alpn_challenges(self) -> None:
        """Answer TLS-ALPN-01 validation handshakes with the certificates of ``live.acme_alpn`` on every ACME TLS
        entrypoint of this process (SPEC §10.4)."""
        contexts = challenge_contexts(self.live.acme_alpn)
        for name, server in self._servers.items():
            ep = self._config.entrypoints.get(name)
            if ep is not None and ep.tls is not None and ep.tls.acme and getattr(server, "certs", None) is not None:
                server.certs.set_challenges(contexts)

    def _retire_listener(self, name: str, server: Any) -> None:
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

    def _start_health(self, runtime: Runtime) -> None:
        """Start the health checks, scale targets and rollout evaluations of a generation that was swapped in.

        A worker starts none: its supervisor runs the probes, ejections, autoscalers, executors and rollouts."""
        if self.on_generation is not None:
            self.on_generation(runtime)
        State.start(runtime, control=self.role != WORKER)
        if self.role == WORKER:
            return
        for svc in runtime.services.values():
            if svc.rollout is not None and svc.rollout.state == "progressing":
                running = self._rollouts.get(svc.name)
                if running is None or running[1].done() or running[0] is not svc.rollout:
                    if running is not None:
                        running[1].cancel()
                    self._rollouts[svc.name] = (svc.rollout,
                                                asyncio.ensure_future(self._run_rollout(svc.name, svc.rollout)))
        for name, (rollout, task) in list(self._rollouts.items()):
            found = runtime.services.get(name)
            if found is None or found.rollout is not rollout:
                del self._rollouts[name]
                task.cancel()

    async def _run_rollout(self, name: str, rollout: Any) -> None:
        """Evaluate a rollout at the end of each step interval until it completes or rolls back (§8.7)."""
        while rollout.state == "progressing":
            await asyncio.sleep(max(0.0, rollout.next_at - self.clock()))
            rollout.tick(self.clock())
            runtime = self.runtime
            svc = runtime.services.get(name) if runtime is not None else None
            if svc is not None and svc.rollout is rollout and isinstance(svc.balancer, RevisionSplit):
                watch_rollout(rollout, svc.balancer)

    def _background(self, coro: Any) -> None:
        """Run a closing coroutine in the background, keeping a reference until it ends."""
        task = asyncio.ensure_future(coro)
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def _record_reload(self, error: str | None) -> None:
        if error is None:
            self.last_success_time = time.time()
            self.reload_successes += 1
        else:
            self.reload_failures += 1
        stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")
        self._last_reload = {"success": error is None, "timestamp": stamp.replace("+00:00", "Z"), "error": error}

    async def _sync_watcher(self) -> None:
        """Start, retarget or stop the file watcher to match the running configuration (SPEC §12.2)."""
        config = self._config
        file = config.providers.file
        want = (file is not None and file.watch and config.path is not None and self.state == GatewayState.RUNNING
                and self.role != WORKER)
        if not want:
            if file is not None and file.watch and config.path is None:
                log.warning("providers.file.watch: the configuration was not loaded from a file; nothing to watch")
            if self._watcher is not None:
                old, self._watcher = self._watcher, None
                await old.close()
            return
        assert file is not None and config.path is not None
        watcher = self._watcher
        if watcher is None:
            from .providers.file import FileWatcher

            watcher = FileWatcher(config.path, file.directory, self._reload_from_files)
            self._watcher = watcher
            watcher.start()
        elif not watcher.retarget(config.path, file.directory):
            return  # armed all along: its events cover every save since the configuration was read
        await watcher.armed()
        # a save after the files were read and before the watches existed (the entrypoints listen already) raised no
        # event: compare the files with what was read instead (SPEC §13.6)
        watcher.catch_up(config.path, file.directory, config.sources)

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
        if self._providers is not None:
            providers, self._providers = self._providers, None
            await providers.close()
        limit = self._config.shutdown_timeout if timeout is None else timeout
        retiring = dict(self._retiring)
        # listeners already retired by a reload drain within the shutdown's limit too
        await asyncio.gather(*(s.drain(limit) for s in [*self._servers.values(), *retiring]))
        await cancel_and_wait(retiring.values())
        live = self.live.close(self.runtime)  # the pools close now
        if self.acme is not None:
            manager, self.acme = self.acme, None
            await manager.close()
        if self._admin is not None:
            await self._admin.close()
        rollouts = [task for _, task in self._rollouts.values()]
        self._rollouts.clear()
        await cancel_and_wait(rollouts)
        await live.close()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
        if self._access_log is not None:
            await self._access_log.close()  # everything logged so far is written
        if self._tracer is not None:
            await self._tracer.close()
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
        for sig, handler in ((signal.SIGTERM, on_signal), (signal.SIGINT, on_signal), (signal.SIGHUP, on_hangup),
                             (signal.SIGUSR1, self.reopen_logs)):
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

    def reopen_logs(self) -> None:
        """SIGUSR1: reopen the access-log file (log rotation)."""
        if self._access_log is not None:
            self._access_log.reopen()
            log.info("access log reopened")

    def bound_addresses(self) -> dict[str, tuple[str, int]]:
        """Actual address per entrypoint (useful after binding port 0)."""
        return {name: server.bound_address() for name, server in self._servers.items()}

    def admin_address(self) -> tuple[str, int] | None:
        """The admin listener's actual address, or None when it is off."""
        return self._admin.bound_address() if self._admin is not None else None

    # -- what the admin API and the metrics collector read (SPEC §11) --------------------------------------------
    def l4_servers(self) -> list[tuple[str, str, Any]]:
        """(entrypoint, "tcp" | "udp", its TcpServer / UdpServer) for the metrics collector."""
        out: list[tuple[str, str, Any]] = []
        for name, server in sorted(self._servers.items()):
            if isinstance(server, TcpListener):
                out.append((name, "tcp", server.server))
            elif isinstance(server, UdpListener):
                out.append((name, "udp", server.server))
        return out

    def tls_reload_errors(self) -> dict[str, int]:
        """Failed certificate reloads per TLS entrypoint (SPEC §10.3)."""
        return {name: int(server.certs.reload_errors) for name, server in self._servers.items()
                if getattr(server, "certs", None) is not None}

    def tls_certificate_expiry(self) -> dict[tuple[str, str], float]:
        """``notAfter`` per (entrypoint, domain) of the certificates served (SPEC §10.4): the loaded certificate
        files of this process's TLS entrypoints, and the ACME manager's certificates."""
        out: dict[tuple[str, str], float] = {}
        for name, server in self._servers.items():
            certs = getattr(server, "certs", None)
            if certs is not None:
                out.update({(name, domain): when for domain, when in certs.expiry().items()})
        if self.acme is not None:
            out.update(self.acme.expiry())
        return out

    def connection_rejections(self) -> dict[str, dict[str, int]]:
        """HTTP connections closed right after accept, per entrypoint and reason (SPEC §3.1)."""
        return {name: rejections.counts() for name, rejections in sorted(self._rejections.items())}

    def connection_counts(self) -> dict[str, int]:
        """Open downstream connections per entrypoint (including listeners draining after a reload)."""
        if self.remote is not None:
            return self.remote.connection_counts()
        counts = {name: len(server.connections) for name, server in self._servers.items()}
        for server in self._retiring:
            name = server.entry.name
            counts[name] = counts.get(name, 0) + len(server.connections)
        return counts

    def http2_abuse_counts(self) -> dict[tuple[str, str], int]:
        """HTTP/2 connections closed with ENHANCE_YOUR_CALM, per (entrypoint, kind) (SPEC §9.1)."""
        counts: dict[tuple[str, str], int] = {}
        for server in [*self._servers.values(), *self._retiring]:
            for key, n in getattr(server, "abuse", {}).items():
                counts[key] = counts.get(key, 0) + n
        return counts

    @property
    def access_log_dropped(self) -> int:
        return self._access_log.dropped if self._access_log is not None else 0

    def health(self) -> dict[str, Any]:
        """Body of ``GET /api/gateway/health`` (SPEC §11.1)."""
        runtime = self.runtime
        backends = [b for svc in runtime.services.values() for b in svc.backends] if runtime is not None else []
        total = sum(st.total_requests() for st in runtime.route_stats.values()) if runtime is not None else 0
        if self.remote is not None:
            total = self.remote.total_requests()
        return {
            "state": self.state.value,
            "uptime_secs": int(self.clock() - self._started_at) if self._started_at else 0,
            "active_connections": sum(self.connection_counts().values()),
            "total_requests": total,
            "backends_total": len(backends),
            "backends_healthy": sum(1 for b in backends if b.eligible),
            "config_generation": self._generation,
            "last_reload": self._last_reload,
        } | ({"workers": self.remote.workers_view()} if self.remote is not None else {})

    def metrics(self) -> str:
        """The Prometheus text exposition (what ``GET /metrics`` serves)."""
        return self.metrics_text().decode()

    def metrics_text(self) -> bytes:
        return metrics_mod.exposition(self.registry)

    def config_dict(self) -> dict[str, Any]:
        """The active effective configuration with secrets redacted (``GET /api/gateway/config``)."""
        return self._config.to_dict(redact=True)

    def routes(self) -> list[dict[str, Any]]:
        """Routes in matching order (SPEC §4.3), as ``GET /api/gateway/routes`` shows them."""
        config = self._config
        ordered = sorted(config.routers.values(), key=lambda r: (-r.effective_priority, r.name.encode()))
        out = []
        for r in ordered:
            entrypoints = list(r.entrypoints) or [
                name for name, ep in config.entrypoints.items() if ep.protocol in _PROTOCOL_ENTRYPOINTS[r.protocol]
            ]
            out.append({
                "name": r.name, "rule": r.rule, "service": r.service, "entrypoints": entrypoints,
                "middlewares": list(r.middlewares), "priority": r.effective_priority, "protocol": r.protocol,
                "provider": config.origins.get(f"routers.{r.name}", "file"),
            })
        return out

    def _backend_view(self, service: str, b: Any) -> dict[str, Any]:
        view = {"service": service, "url": b.url, "weight": b.weight, "healthy": bool(b.eligible),
                "active_connections": b.load(),  # with workers: the instance's count in the shared segment
                "revision": b.revision or None}
        if b.scraped_at >= 0.0:  # what its model server reported to the inference strategy (SPEC §16.5)
            view["model_server"] = {"waiting": b.waiting, "running": b.running, "kv_cache_usage": b.kv_usage,
                                    "age_seconds": round(time.monotonic() - b.scraped_at, 3)}
        return view

    def services(self) -> list[dict[str, Any]]:
        """Services sorted by name (``GET /api/gateway/services``)."""
        runtime = self.runtime
        if runtime is None:
            return []
        out = []
        for name in sorted(runtime.services):
            svc = runtime.services[name]
            backends = [self._backend_view(name, b) for b in svc.backends]
            for b in backends:
                del b["service"]
            revisions = getattr(svc.balancer, "revisions", ())
            out.append({
                "name": name,
                "strategy": self._config.services[name].load_balancer.strategy,
                "backends_total": len(backends),
                "backends_healthy": sum(1 for b in backends if b["healthy"]),
                "backends": backends,
                "scaling": svc.targets[0].as_dict() if svc.targets and not revisions else None,
                "revisions": [
                    {"name": r.name, "traffic_percent": r.percent, "backends_total": len(r.backends),
                     "backends_healthy": sum(1 for b in r.backends if b.eligible),
                     "scaling": r.target.as_dict() if r.target is not None else None}
                    for r in revisions
                ],
                "rollout": svc.rollout.as_dict(self.clock()) if svc.rollout is not None else None,
                "provider": self._config.origins.get(f"services.{name}", "file"),
            })
        return out

    def backends(self) -> list[dict[str, Any]]:
        """All backends sorted by service then URL (``GET /api/gateway/backends``)."""
        runtime = self.runtime
        if runtime is None:
            return []
        rows = [self._backend_view(name, b) for name, svc in runtime.services.items() for b in svc.backends]
        return sorted(rows, key=lambda r: (r["service"], r["url"]))

    def version(self) -> dict[str, Any]:
        """``GET /api/gateway/version``: compiled is true when every accelerated module runs compiled."""
        if self._version is None:
            from ._compat import implementations

            self._version = {"name": "a3s-gateway", "version": __version__, "python": platform.python_version(),
                             "compiled": all(compiled for _, _, compiled in implementations())}
        return self._version


#: entrypoint protocols a router of each protocol attaches to when it names none
_PROTOCOL_ENTRYPOINTS: dict[str, tuple[str, ...]] = {"http": ("http",), "tcp": ("tcp",), "udp": ("udp",)}


@dataclasses.dataclass(slots=True)
class _Observers:
    """The access log, tracer and admin server a reload would run with."""

    access_log: AccessLog | None
    tracer: Tracer
    admin: AdminServer | None
    admin_changed: bool
    admin_chain: Chain | None
    admin_mws: dict[tuple[str, str], Any]


def _entries(runtime: Runtime) -> dict[str, Any]:
    """Every entrypoint of a generation: HTTP (EntrypointRuntime), TCP and UDP (proxy.listeners)."""
    return {**runtime.entrypoints, **runtime.l4}
