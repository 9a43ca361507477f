"""Backend health: active probes (SPEC §7.3), passive outlier ejection (§7.4) and the eligibility they compose (§7.1).

A backend is eligible (as far as this module decides) when active health says healthy AND passive health has not
ejected it; every change of either flag writes ``backend.eligible`` and logs the transition. The per-backend state
lives in :class:`HealthState`, keyed by (service name, backend URL), which the gateway carries across reloads so
unchanged backends keep their health.

Decision functions take ``now`` (the event loop's monotonic clock, ``loop.time()``) as a parameter, so they are
exact under a fake clock; the asyncio tasks (:meth:`ActiveChecker.start`, :meth:`PassiveHealth.start`) only feed
them. :meth:`PassiveHealth.record` is on the data plane: a few attribute reads and a bounded deque append.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Final

from .._aio import cancel_and_wait
from .._version import __version__
from ..config.model import HealthCheckConfig, PassiveConfig, TransportConfig
from ..http.client import FetchError, Target, client_context, fetch
from .balancer import Backend

log: Final = logging.getLogger("a3s_gateway.health")

USER_AGENT: Final = f"a3s-gateway/{__version__}".encode("ascii")
READMIT_TIMEOUT: Final = 1.0  # default re-admission probe: TCP connect within 1 s
EXPIRE_PERIOD: Final = 0.5  # how often the passive control-plane task looks for expired ejections
MAX_EJECTION_FACTOR: Final = 10
PROBE_MAX_BODY: Final = 1 << 20

ProbeResult = bool | str  # True, or the reason of a failure
Probe = Callable[[Backend, HealthCheckConfig], Awaitable[ProbeResult]]
ReadmitProbe = Callable[[Backend], Awaitable[ProbeResult]]


class BackendHealth:
    """Health of one (service, URL) pair; ``backend`` is the most recent Backend object bound to it."""

    __slots__ = (
        "backend",
        "draining",
        "ejected",
        "ejected_until",
        "ejections",
        "failures",
        "healthy",
        "last_readmitted",
        "passive_failures",
        "ready",
        "service",
        "successes",
    )

    def __init__(self, service: str, backend: Backend) -> None:
        self.service = service
        self.backend = backend
        self.healthy = True  # active health (§7.3)
        self.ejected = False  # passive ejection (§7.4)
        self.successes = 0  # consecutive successful probes
        self.failures = 0  # consecutive failed probes
        self.passive_failures: deque[float] = deque()  # recent passive failure times, oldest first
        self.ejections = 0  # n: consecutive ejections so far (the n-th lasts min(n, 10) × ejection)
        self.ejected_until = 0.0
        self.last_readmitted: float | None = None  # when the last ejection ended, until n is reset
        # replicas of a scale target (§8.3): not ready until the readiness probe passes; draining before a stop
        self.ready = True
        self.draining = False

    @property
    def eligible(self) -> bool:
        return self.healthy and not self.ejected and self.ready and not self.draining

    def apply(self) -> None:
        """Write the composed eligibility to the bound Backend object."""
        self.backend.eligible = self.healthy and not self.ejected and self.ready and not self.draining

    def __repr__(self) -> str:
        return (
            f"BackendHealth({self.service!r}, {self.backend.url!r}, healthy={self.healthy}, ejected={self.ejected}, "
            f"ejections={self.ejections})"
        )


class HealthState:
    """Registry of :class:`BackendHealth` by (service, URL); survives reloads."""

    def __init__(self) -> None:
        self._services: dict[str, dict[str, BackendHealth]] = {}

    def get(self, service: str, backend: Backend) -> BackendHealth:
        """The state of ``backend`` in ``service``, created healthy on first use.

        A different Backend object with a known URL (a reload) is bound to the stored state and given its
        eligibility, so the new object starts out as healthy/ejected as its predecessor.
        """
        urls = self._services.get(service)
        if urls is None:
            urls = self._services[service] = {}
        health = urls.get(backend.url)
        if health is None:
            health = urls[backend.url] = BackendHealth(service, backend)
        elif health.backend is not backend:
            health.backend = backend
            health.apply()
        return health

    def attach(self, service: str, backends: list[Backend]) -> None:
        """Bind freshly built Backend objects to their stored state (call after building a service on reload)."""
        for backend in backends:
            self.get(service, backend)

    def service(self, service: str) -> list[BackendHealth]:
        """The states of one service's backends."""
        return list(self._services.get(service, {}).values())

    def forget_except(self, keep: set[tuple[str, str]]) -> None:
        """Drop the state of every (service, URL) pair not in ``keep`` (backends no longer configured)."""
        for service in list(self._services):
            urls = self._services[service]
            for url in [u for u in urls if (service, u) not in keep]:
                del urls[url]
            if not urls:
                del self._services[service]

    def __len__(self) -> int:
        return sum(len(urls) for urls in self._services.values())


# --- probes ----------------------------------------------------------------------------------------------------


def describe_error(exc: BaseException) -> str:
    """A short reason for a failed probe."""
    if isinstance(exc, FetchError) and exc.__cause__ is not None:
        exc = exc.__cause__
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, ConnectionResetError):
        return "connection reset"
    if isinstance(exc, ssl.SSLError):
        return f"TLS error: {exc.reason or exc}"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    text = str(exc)
    return text or type(exc).__name__


async def tcp_probe(backend: Backend, timeout: float) -> ProbeResult:
    """Success = a TCP connection to ``backend.host:port`` within ``timeout``."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(backend.host, backend.port), timeout)
    except asyncio.TimeoutError:
        return f"connect timed out after {timeout:g}s"
    except OSError as exc:
        return describe_error(exc)
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


class Prober:
    """The default active probe: HTTP(S) ``GET`` of base URL + path, or a TCP connect (no path, ``tcp://``).

    Request targets are prepared once per (backend URL, path). h2c backends are probed with HTTP/1.1 over
    cleartext. ``ssl_context`` defaults to ``ssl.create_default_context()`` (created on the first https probe).
    """

    def __init__(self, ssl_context: ssl.SSLContext | None = None, server_name: str = "") -> None:
        self._ssl = ssl_context
        self._server_name = server_name  # the service's transport tls_server_name (SPEC §10.5), "" = URL host
        self._targets: dict[tuple[str, str], Target] = {}

    def _target(self, backend: Backend, path: str) -> Target:
        key = (backend.url, path)
        target = self._targets.get(key)
        if target is None:
            tls = backend.scheme == "https"
            if tls and self._ssl is None:
                self._ssl = ssl.create_default_context()
            host = f"[{backend.host}]" if ":" in backend.host else backend.host
            url = f"{'https' if tls else 'http'}://{host}:{backend.port}{backend.base_path}{path}"
            target = Target(url, self._ssl if tls else None, self._server_name)
            target.host_header = backend.host_header.encode("idna")
            self._targets[key] = target
        return target

    async def __call__(self, backend: Backend, cfg: HealthCheckConfig) -> ProbeResult:
        path = cfg.path
        if path is None or backend.scheme in ("tcp", "udp"):
            return await tcp_probe(backend, cfg.timeout)
        try:
            target = self._target(backend, path)
        except ValueError as exc:  # includes UnicodeError: a host or path that cannot be sent
            return f"invalid probe URL: {exc}"
        try:
            result = await asyncio.wait_for(
                fetch(target, b"GET", [(b"User-Agent", USER_AGENT)], PROBE_MAX_BODY), cfg.timeout
            )
        except asyncio.TimeoutError:
            return f"timed out after {cfg.timeout:g}s"
        except (FetchError, OSError) as exc:
            return describe_error(exc)
        status = result.status
        ok = status in cfg.expected_status if cfg.expected_status else 200 <= status < 300
        return True if ok else f"status {status}"


def probe_for(transport: TransportConfig | None) -> Prober:
    """The probe of a service: https backends are probed with the service's transport TLS settings (§10.5)."""
    if transport is None:
        return Prober()
    return Prober(client_context(transport, ["http/1.1"]), transport.tls_server_name)


# --- active health ---------------------------------------------------------------------------------------------


class ActiveChecker:
    """Periodic probes of one service's backends (control plane); one task per backend."""

    def __init__(
        self,
        service: str,
        backends: list[Backend],
        cfg: HealthCheckConfig,
        state: HealthState,
        *,
        rng: Callable[[], float] = random.random,
        probe: Probe | None = None,
        transport: TransportConfig | None = None,
    ) -> None:
        self.service = service
        self.backends = list(backends)
        self.cfg = cfg
        self.state = state
        self._rng = rng
        self._probe: Probe = probe if probe is not None else probe_for(transport)
        self._tasks: list[asyncio.Task[None]] = []
        self._by_url: dict[str, asyncio.Task[None]] = {}
        self._started = False
        state.attach(service, self.backends)

    async def probe_backend(self, backend: Backend) -> ProbeResult:
        """One probe with this service's settings (usable as the passive re-admission probe)."""
        try:
            return await self._probe(backend, self.cfg)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a broken probe counts as a failure, it must not kill the checker
            return f"probe error: {exc!r}"

    def observe(self, backend: Backend, result: ProbeResult) -> None:
        """Count one probe outcome against the thresholds; flips ``healthy`` at a threshold."""
        health = self.state.get(self.service, backend)
        if result is True:
            health.failures = 0
            health.successes += 1
            if not health.healthy and health.successes >= self.cfg.healthy_threshold:
                health.healthy = True
                health.apply()
                log.info(
                    "backend %s of service %s is up (%d consecutive successful probes)",
                    backend.url, self.service, health.successes,
                )
        else:
            health.successes = 0
            health.failures += 1
            if health.healthy and health.failures >= self.cfg.unhealthy_threshold:
                health.healthy = False
                health.apply()
                log.info(
                    "backend %s of service %s is down (%d consecutive failed probes: %s)",
                    backend.url, self.service, health.failures, result or "failed",
                )

    async def _run(self, backend: Backend) -> None:
        loop = asyncio.get_running_loop()
        interval = self.cfg.interval
        self.observe(backend, await self.probe_backend(backend))
        due = loop.time() + self._rng() * interval
        while True:
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            self.observe(backend, await self.probe_backend(backend))
            due += interval
            now = loop.time()
            if due < now:  # a probe overran its slot: keep the phase, skip the missed slots
                due += ((now - due) // interval + 1) * interval

    def start(self) -> None:
        """Start one task per backend: first probe at once, then every ``interval`` (random first offset)."""
        if self._tasks or self._started:
            return
        self._started = True
        for backend in self.backends:
            self._spawn(backend)

    def _spawn(self, backend: Backend) -> None:
        task = asyncio.get_running_loop().create_task(
            self._run(backend), name=f"health-check {self.service} {backend.url}"
        )
        self._tasks.append(task)
        self._by_url[backend.url] = task

    def add(self, backend: Backend) -> None:
        """A replica joined the service (scale targets, §8.3): probe it from now on."""
        if any(b.url == backend.url for b in self.backends):
            return
        self.backends.append(backend)
        self.state.get(self.service, backend)
        if self._started:
            self._spawn(backend)

    async def remove(self, backend: Backend) -> None:
        """A replica left the service: stop probing it."""
        self.backends = [b for b in self.backends if b.url != backend.url]
        task = self._by_url.pop(backend.url, None)
        if task is not None:
            self._tasks.remove(task)
            await _reap([task])

    async def close(self) -> None:
        """Cancel the probe tasks and wait for them to end."""
        tasks, self._tasks = self._tasks, []
        self._by_url.clear()
        self._started = False
        await _reap(tasks)


# --- passive health --------------------------------------------------------------------------------------------


class PassiveHealth:
    """Outlier ejection for one service: the data plane reports outcomes, a control-plane task re-admits."""

    def __init__(
        self,
        service: str,
        cfg: PassiveConfig,
        state: HealthState,
        *,
        readmit_probe: ReadmitProbe | None = None,
    ) -> None:
        self.service = service
        self.cfg = cfg
        self.state = state
        self._readmit_probe: ReadmitProbe = readmit_probe if readmit_probe is not None else _default_readmit
        self._task: asyncio.Task[None] | None = None
        self._probes: dict[str, asyncio.Task[None]] = {}  # URL -> running re-admission probe
        #: in a worker process (SPEC §13.4): where an ejection goes, ``(service, url, why)``; the supervisor ejects
        #: the backend for every worker and re-admits it (the worker stops using it at once)
        self.remote: Callable[[str, str, str], None] | None = None

    def _duration(self, n: int) -> float:
        return min(n, MAX_EJECTION_FACTOR) * self.cfg.ejection

    def record(self, backend: Backend, failed: bool, now: float) -> None:
        """One request outcome (``failed``: transport error or status 500/502/503/504). O(1)."""
        health = self.state.get(self.service, backend)
        if health.ejected:
            return  # late outcomes of requests sent before the ejection
        cfg = self.cfg
        readmitted_at = health.last_readmitted
        if readmitted_at is not None and now - readmitted_at >= cfg.window:
            health.ejections = 0  # eligible for a whole window since re-admission: n returns to 1
            health.last_readmitted = None
        if not failed:
            return
        times = health.passive_failures
        if times.maxlen != cfg.max_failures:  # first failure, or max_failures changed on reload
            times = health.passive_failures = deque(times, maxlen=cfg.max_failures)
        times.append(now)
        if len(times) == cfg.max_failures and now - times[0] < cfg.window:
            why = f"{len(times)} failures within {cfg.window:g}s"
            remote = self.remote
            if remote is not None:
                health.ejected = True  # until the supervisor's view says otherwise
                health.passive_failures.clear()
                health.apply()
                remote(self.service, backend.url, why)
                return
            self.eject(health, now, why)

    def eject_reported(self, backend: Backend, now: float, why: str) -> None:
        """A worker process saw ``max_failures`` (SPEC §13.4): eject for every worker, as :meth:`record` would."""
        health = self.state.get(self.service, backend)
        if health.ejected:
            return
        if health.last_readmitted is not None and now - health.last_readmitted >= self.cfg.window:
            health.ejections = 0
            health.last_readmitted = None
        self.eject(health, now, why)

    def eject(self, health: BackendHealth, now: float, why: str) -> None:
        """Eject for the next duration (``min(n, 10) × ejection``), until a re-admission probe passes."""
        health.ejections += 1
        duration = self._duration(health.ejections)
        health.ejected = True
        health.ejected_until = now + duration
        health.last_readmitted = None
        health.passive_failures.clear()
        health.apply()
        log.info(
            "backend %s of service %s is ejected for %gs (%s; ejection %d)",
            health.backend.url, self.service, duration, why, health.ejections,
        )

    def expire(self, now: float) -> list[Backend]:
        """Ejected backends whose ejection time has passed: due for a re-admission probe. No side effects."""
        return [h.backend for h in self.state.service(self.service) if h.ejected and h.ejected_until <= now]

    def readmitted(self, backend: Backend, ok: bool, now: float, reason: str = "") -> None:
        """Outcome of the re-admission probe: ok -> eligible again; failed -> ejected again for the next n."""
        health = self.state.get(self.service, backend)
        if not health.ejected:
            return
        if ok:
            health.ejected = False
            health.ejected_until = 0.0
            health.last_readmitted = now
            health.apply()
            log.info("backend %s of service %s is re-admitted (probe succeeded)", backend.url, self.service)
        else:
            self.eject(health, now, f"re-admission probe failed: {reason or 'failed'}")

    async def _readmit(self, backend: Backend) -> None:
        try:
            try:
                result = await self._readmit_probe(backend)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                result = f"probe error: {exc!r}"
            now = asyncio.get_running_loop().time()
            self.readmitted(backend, result is True, now, "" if result is True else str(result or "failed"))
        finally:
            self._probes.pop(backend.url, None)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            for backend in self.expire(loop.time()):
                if backend.url not in self._probes:
                    self._probes[backend.url] = loop.create_task(
                        self._readmit(backend), name=f"readmit {self.service} {backend.url}"
                    )
            await asyncio.sleep(EXPIRE_PERIOD)

    def start(self) -> None:
        """Start the re-admission task (every ~0.5 s: expire, probe, readmitted)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"passive-health {self.service}")

    async def close(self) -> None:
        """Cancel the re-admission task and any running probes."""
        tasks = list(self._probes.values())
        if self._task is not None:
            tasks.append(self._task)
            self._task = None
        await _reap(tasks)
        self._probes.clear()


async def _default_readmit(backend: Backend) -> ProbeResult:
    return await tcp_probe(backend, READMIT_TIMEOUT)


async def _reap(tasks: list[asyncio.Task[None]]) -> None:
    """Cancel tasks and wait for them to end; report unexpected errors instead of raising them."""
    for exc in await cancel_and_wait(tasks):
        if isinstance(exc, Exception):
            log.error("health task failed: %r", exc)
