"""One scale target (SPEC §8.1): its replicas, their readiness, the cold-start queue and the autoscaler loop.

The pieces are kept apart as in Knative: *collect* (``record`` every second: in-flight on the replicas + queued),
*decide* (:class:`~a3s_gateway.scaling.autoscaler.Autoscaler`, pure, every 2 s), *actuate* (the executor's
``scale``). The request path touches this object only when a request finds no replica (``hold``), when a request on
one of its replicas ends while requests are queued (``released``) and when a client leaves the queue (``unhold``).

Replicas are ordinary :class:`Backend` objects in the service's live backend list (the balancer reads the same
list), each with its upstream pool. They start not ready; the readiness probe (§8.3) makes them eligible, at which
point queued requests are dispatched in FIFO order up to the free capacity.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from .._aio import cancel_and_wait
from ..config.model import HealthCheckConfig
from ..proxy.upstream import Pool
from ..service.balancer import Backend
from ..service.health import probe_for
from .autoscaler import Autoscaler
from .buffer import ColdStartQueue, Waiter

if TYPE_CHECKING:
    from ..config.model import ScalingConfig, TransportConfig
    from ..service.health import ActiveChecker, HealthState, PassiveHealth

log: Final = logging.getLogger("a3s_gateway.scaling")

SAMPLE_PERIOD: Final = 1.0  # §8.2: one concurrency sample a second
TICK_EVERY: Final = 2  # samples per autoscaler tick (2 s)
RESEND_AFTER: Final = 30.0  # re-send the desired count while the executor reports another
READY_TIMEOUT: Final = 1.0  # readiness probe timeout (§8.3)
FAST_PROBE: Final = 0.1  # readiness probe period while requests wait or a scale-up is pending
SLOW_PROBE: Final = 10.0  # otherwise, when the service has no health_check interval


class ScaleTarget:
    """Replicas + readiness + cold-start queue + autoscaler of one scaled service (or revision)."""

    def __init__(
        self,
        name: str,
        service: str,
        cfg: ScalingConfig,
        backends: list[Backend],
        pools: dict[str, Pool],
        transport: TransportConfig,
        loop: asyncio.AbstractEventLoop,
        health: HealthState,
        *,
        probe_path: str | None = None,
        probe_interval: float = SLOW_PROBE,
        revision: str = "",
        clock: Callable[[], float] | None = None,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.name = name  # passed to executors (§8.1)
        self.service = service  # health-state / metrics service name
        self.revision = revision  # the revision the replicas belong to (§8.6), "" without revisions
        self.cfg = cfg
        self.backends = backends  # the live list the balancer reads (mutated in place)
        self.pools = pools  # the service's pools (mutated in place)
        self.transport = transport
        self.loop = loop
        self.health = health
        self.clock: Callable[[], float] = clock if clock is not None else loop.time
        self.wall = wall
        self.checker: ActiveChecker | None = None
        self.passive: PassiveHealth | None = None
        self.executor: Any = None
        self.balancer: Any = None  # CappedBalancer when container_concurrency > 0 (free_slots)
        self.probe_cfg = HealthCheckConfig(path=probe_path or None, timeout=READY_TIMEOUT)
        self.probe_interval = probe_interval
        self.prober = probe_for(transport)
        self.autoscaler = Autoscaler(cfg, self.clock())
        self.queue = ColdStartQueue(loop, self.clock, cfg.buffer_size, cfg.buffer_timeout_secs)  # §8.4
        # executor bookkeeping
        self.desired = cfg.min_replicas  # last count sent to the executor
        self.actual = 0  # last count the executor reported
        self.scale_pending = False  # a scale-up was asked for and no replica is ready yet
        # replicas the endpoints serve for when not one per endpoint (Box's count while the static servers stand in)
        self.stand_in: int | None = None
        self._last_sent = -1e18
        self._scaling: asyncio.Task[None] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._wake = asyncio.Event()
        self.running = False
        # metrics (§11.2): the queue's own counters, and the executor's failures
        self.wait = self.queue.wait  # gateway_buffer_wait_seconds
        self.rejections = self.queue.rejections  # gateway_buffer_rejections_total
        self.executor_errors = 0
        self._known_urls: set[str] = set()  # endpoints adopted (made not ready once)
        #: in a worker process (SPEC §13.4): where a cold poke goes (the supervisor scales); the target then runs no
        #: readiness probe, autoscaler or executor of its own and takes its replicas from :meth:`follow_endpoints`
        self.remote_poke: Callable[[str], None] | None = None
        #: in a supervisor: each worker's last count of queued requests for this target, by worker
        self.remote_queued: dict[int, int] = {}
        for backend in backends:
            self._adopt(backend)

    # -- replicas ----------------------------------------------------------------------------------------------
    def _adopt(self, backend: Backend) -> None:
        backend.target = self
        health = self.health.get(self.service, backend)
        if backend.url not in self._known_urls:
            self._known_urls.add(backend.url)
            health.ready = False  # every endpoint of a scale target starts not ready (§8.3)
            health.apply()

    def add_endpoint(self, url: str) -> Backend:
        """A new replica endpoint (not ready until its readiness probe passes)."""
        for backend in self.backends:
            if backend.url == url:
                return backend
        backend = Backend(url)
        backend.revision = self.revision
        backend.passive = self.passive
        self.pools[url] = Pool(backend, self.loop, self.transport)
        self._adopt(backend)
        self.backends.append(backend)
        self._wake.set()
        log.info("service %s: replica %s added (not ready)", self.name, url)
        return backend

    def remove_endpoint(self, url: str) -> None:
        """A replica is gone (process exit, endpoint removed): it leaves the pool at once (§8.3)."""
        for i, backend in enumerate(self.backends):
            if backend.url == url:
                del self.backends[i]
                break
        else:
            return
        health = self.health.get(self.service, backend)
        health.ready = False
        health.apply()
        self._known_urls.discard(url)
        pool = self.pools.pop(url, None)
        if pool is not None:
            pool.close()
        if self.checker is not None:
            self.loop.create_task(self.checker.remove(backend))
        log.info("service %s: replica %s removed", self.name, url)

    def set_endpoints(self, urls: list[str], replicas: int | None = None) -> None:
        """The executor's full list of replica endpoints (box, kubernetes); ``replicas`` when they serve for another
        number of replicas (see :meth:`replicas_ready`)."""
        self.stand_in = replicas
        wanted = set(urls)
        for backend in list(self.backends):
            if backend.url not in wanted:
                self.remove_endpoint(backend.url)
        for url in urls:
            self.add_endpoint(url)
        if self.scale_pending and 0 < self.desired <= self.replicas_ready():
            self.scale_pending = False  # more replicas behind endpoints already ready (no probe will report it)

    def is_ready(self, backend: Backend) -> bool:
        return self.health.get(self.service, backend).ready

    def ready_count(self) -> int:
        return sum(1 for b in self.backends if self.health.get(self.service, b).ready)

    def replicas_ready(self) -> int:
        """R of the autoscaler (§8.2): the ready endpoints, at most the replicas they serve for. Two static servers
        standing in for Box's one replica are one replica: counted as two, the scale-down rate limit
        (``floor(R / max_scale_down_rate)``) would never let the target reach zero."""
        ready = self.ready_count()
        return ready if self.stand_in is None else min(ready, self.stand_in)

    def in_flight(self) -> int:
        """On the replicas, across the instance (a supervisor reads its workers' counts from the shared segment)."""
        return sum(b.load() for b in self.backends)

    def queued(self) -> int:
        """Requests waiting for a replica: this process's queue plus the workers' last reports."""
        return len(self.queue) + sum(self.remote_queued.values())

    def follow_endpoints(self, endpoints: list[tuple[str, bool, bool]], stand_in: int | None) -> None:
        """A worker takes the supervisor's replicas: (url, ready, draining) each; queued requests go out at once."""
        self.set_endpoints([url for url, _, _ in endpoints], stand_in)
        for url, ready, draining in endpoints:
            for backend in self.backends:
                if backend.url == url:
                    health = self.health.get(self.service, backend)
                    if health.ready != ready or health.draining != draining:
                        health.ready = ready
                        health.draining = draining
                        health.apply()
        if self.ready_count():
            self.scale_pending = False
        self.kick()

    def mark_ready(self, backend: Backend) -> None:
        health = self.health.get(self.service, backend)
        if health.ready:
            return
        health.ready = True
        health.apply()
        self.scale_pending = False
        log.info("service %s: replica %s is ready", self.name, backend.url)
        ready = getattr(self.executor, "ready", None)
        if ready is not None:
            ready(backend.url)
        if self.checker is not None:
            self.checker.add(backend)  # normal health checks apply from now on (§8.3)
        self.kick()

    def mark_not_ready(self, backend: Backend) -> None:
        """A connect failure to a replica (§8.3): not ready at once, probing resumes."""
        health = self.health.get(self.service, backend)
        if health.ready:
            health.ready = False
            health.apply()
            log.info("service %s: replica %s is not ready (connect failed)", self.name, backend.url)
        self._wake.set()

    def set_draining(self, url: str, draining: bool = True) -> None:
        for backend in self.backends:
            if backend.url == url:
                health = self.health.get(self.service, backend)
                health.draining = draining
                health.apply()

    def choose_drain(self, urls: list[str], n: int) -> list[str]:
        """The ``n`` replicas to drain: fewest in-flight requests, newest (last added) on ties (§8.3)."""
        order = {b.url: (b.load(), -i) for i, b in enumerate(self.backends)}
        ranked = sorted((u for u in urls if u in order), key=lambda u: order[u])
        return ranked[:n]

    def in_flight_of(self, url: str) -> int:
        for backend in self.backends:
            if backend.url == url:
                return backend.load()
        return 0

    def all_not_ready(self) -> None:
        """The executor accepted a scale to zero: every endpoint is not ready at once (§8.3)."""
        for backend in self.backends:
            health = self.health.get(self.service, backend)
            if health.ready:
                health.ready = False
                health.apply()
                if self.checker is not None:
                    self.loop.create_task(self.checker.remove(backend))

    def replica_lost(self) -> None:
        """A replica died or failed to start: it is replaced now (the executor backs off repeated failures; a
        refused start is retried at the next tick)."""
        self.actual = max(0, self.actual - 1)
        self._last_sent = -1e18
        self._wake.set()
        if self.running and self.desired > 0 and (self._scaling is None or self._scaling.done()):
            self._scaling = self.loop.create_task(self._scale(self.desired, "replacing a replica that exited"))

    # -- the cold-start queue (§8.4) -----------------------------------------------------------------------------
    @property
    def buffered(self) -> bool:
        return self.cfg.buffer_enabled

    def hold_target(self) -> ScaleTarget:
        return self

    def hold(self, waiter: Waiter, front: bool = False) -> bool:
        """Queue a request that found no replica; False when the queue is full (the caller answers)."""
        if not self.queue.push(waiter, front):
            return False
        self.autoscaler.last_active = self.clock()
        if not self.scale_pending and self.ready_count() == 0:
            self.poke()
        self._wake.set()
        return True

    def unhold(self, waiter: Waiter, reason: str = "client_gone") -> None:
        """Take a request out of the queue: its client left (nothing is sent upstream), or shutdown."""
        self.queue.remove(waiter, reason)

    def capacity(self) -> int:
        """How many queued requests can be dispatched now."""
        if self.balancer is not None and self.cfg.container_concurrency > 0:
            return int(self.balancer.free_slots())
        return len(self.queue) if any(b.eligible for b in self.backends) else 0

    def kick(self) -> None:
        """Dispatch queued requests in FIFO order up to the free capacity."""
        if self.queue:
            self.queue.release(self.capacity())

    def released(self) -> None:
        """A request on one of the replicas ended (data plane): a slot may be free for a queued request; the
        target saw traffic (the scale-to-zero delay counts from the last request, §8.2)."""
        self.autoscaler.last_active = self.clock()
        if self.queue:
            self.kick()

    def flush(self) -> None:
        """Shutdown drain deadline: every queued request gets 503 (§8.4)."""
        self.queue.flush()

    # -- executor ----------------------------------------------------------------------------------------------
    def poke(self) -> None:
        """Cold poke (§8.2): a request waits and nothing is ready: ask for replicas now, without the tick."""
        want = max(1, self.cfg.min_replicas, self.autoscaler.desired)
        self.autoscaler.desired = want
        self.scale_pending = True
        if self.remote_poke is not None:
            self.remote_poke(self.name)
            return
        if self.running and (self._scaling is None or self._scaling.done()):
            self._scaling = self.loop.create_task(self._scale(want, "cold start: a request is waiting"))

    async def _scale(self, desired: int, reason: str) -> None:
        executor = self.executor
        if executor is None:
            return
        self.desired = desired
        self._last_sent = self.clock()
        if desired > self.replicas_ready():
            self.scale_pending = True
        try:
            actual = await executor.scale(desired, self.actual, reason)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the executor's boundary: counted, logged, retried at the next tick
            self.executor_errors += 1
            log.warning("service %s: executor %s failed to scale to %d: %s", self.name, executor.kind, desired, exc)
            self._last_sent = -1e18
            return
        log.info("service %s: scaled to %d (executor %s reports %d; %s)", self.name, desired, executor.kind,
                 actual, reason)
        self.actual = actual
        if desired == 0 and executor.kind != "process":
            self.all_not_ready()

    def executor_error(self, message: str) -> None:
        self.executor_errors += 1
        log.warning("service %s: executor %s: %s", self.name, getattr(self.executor, "kind", "?"), message)

    # -- control-plane tasks -------------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the readiness prober, the autoscaler loop and the executor's own loop."""
        if self.running:
            return
        self.running = True
        loop = self.loop
        self._tasks = [
            loop.create_task(self._readiness(), name=f"readiness {self.name}"),
            loop.create_task(self._autoscale(), name=f"autoscaler {self.name}"),
        ]
        run = getattr(self.executor, "run", None)
        if run is not None:
            self._tasks.append(loop.create_task(run(self.urgent, self.executor_error), name=f"executor {self.name}"))
        if self.queue and not self.scale_pending:
            self.poke()
        elif self.cfg.min_replicas > 0:
            self._scaling = loop.create_task(self._scale(self.cfg.min_replicas, "min_replicas"))

    def urgent(self) -> bool:
        """Requests are waiting or a scale-up is pending (executors poll faster, §8.5)."""
        return bool(self.queued()) or self.scale_pending or self.desired != self.actual

    async def _readiness(self) -> None:
        while True:
            pending = [b for b in self.backends if not self.is_ready(b)]
            if pending:
                results = await asyncio.gather(*(self._probe(b) for b in pending))
                for backend, ok in zip(pending, results, strict=True):
                    if ok and backend in self.backends:
                        self.mark_ready(backend)
            self._wake.clear()
            delay = FAST_PROBE if self.urgent() else self.probe_interval
            try:
                await asyncio.wait_for(self._wake.wait(), delay)  # a new endpoint or a waiting request: probe now
            except asyncio.TimeoutError:
                pass

    async def _probe(self, backend: Backend) -> bool:
        try:
            return await self.prober(backend, self.probe_cfg) is True
        except asyncio.CancelledError:
            raise
        except Exception:  # a broken probe is a failed probe
            return False

    async def _autoscale(self) -> None:
        n = 0
        while True:
            await asyncio.sleep(SAMPLE_PERIOD)
            now = self.clock()
            queued = self.queued()
            self.autoscaler.record(now, self.in_flight(), queued)
            n += 1
            if n % TICK_EVERY:
                continue
            decision = self.autoscaler.decide(now, self.replicas_ready(), queued)
            desired = decision.desired
            resend = desired != self.actual and now - self._last_sent >= RESEND_AFTER
            if (desired != self.desired or resend) and (self._scaling is None or self._scaling.done()):
                await self._scale(desired, decision.reason)

    async def close(self, stop_replicas: bool = True) -> None:
        """Stop the loops; with ``stop_replicas`` the executor stops what it started (process children)."""
        self.running = False
        tasks, self._tasks = self._tasks, []
        if self._scaling is not None:
            tasks.append(self._scaling)
            self._scaling = None
        await cancel_and_wait(tasks)
        self.queue.close()
        if stop_replicas and self.executor is not None:
            await self.executor.close()

    # -- dashboard (§11.1) -------------------------------------------------------------------------------------
    def as_dict(self) -> dict[str, Any]:
        return {
            "executor": getattr(self.executor, "kind", self.cfg.executor),
            "desired_replicas": self.autoscaler.desired,
            "actual_replicas": self.actual,
            "ready_replicas": self.ready_count(),
            "panic": self.autoscaler.panic,
            "queue_depth": self.queued(),
        }
