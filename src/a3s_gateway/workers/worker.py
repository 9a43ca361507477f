"""A worker process (SPEC §13.4): the data plane of one core, driven by its supervisor over a control channel.

The supervisor starts it with ``A3S_GATEWAY_WORKER=<channel fd>,<index>,<supervisor pid>,<segment fd>,<segment size>``
in its environment. It
binds every entrypoint with ``SO_REUSEPORT`` (the kernel spreads new connections over the workers), serves the
traffic, and runs no health probe, autoscaler, executor, rollout evaluation, file watcher or admin listener: it takes
health, replica endpoints and rollout splits from the supervisor, and reports its load every second (a cold poke
at once). It dies with its supervisor (parent-death signal, and the end of the channel).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import socket
import sys
from typing import Any, Final

from .. import heap
from .. import segment as shared_segment
from ..errors import ConfigError, StartupError
from ..gateway import WORKER, Gateway, GatewayState
from ..runtime import Runtime
from ..segment import Segment
from ..service import inference
from ..service.revision import RevisionSplit
from .aggregate import snapshot
from .channel import Channel
from .shared import attach

log: Final = logging.getLogger("a3s_gateway.worker")

ENV: Final = "A3S_GATEWAY_WORKER"
REPORT_EVERY: Final = 1.0  # seconds between load reports (SPEC §13.4)
_PR_SET_PDEATHSIG: Final = 1


def die_with_parent(parent: int) -> None:
    """Ask the kernel for SIGTERM when the supervisor dies (Linux); exit now if it is already gone."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        except (OSError, AttributeError):  # no prctl: the end of the channel still stops the worker
            pass
    # the one-file binary runs each process under its bootloader, which is then the parent: there the end of the
    # channel (the supervisor's socket closes with it) stops the worker
    if os.getppid() != parent and not getattr(sys, "frozen", False):
        os._exit(0)


class Worker:
    """One worker's gateway and its side of the channel."""

    def __init__(self, channel: Channel, index: int, segment: Segment) -> None:
        self.channel = channel
        self.index = index
        self.segment = segment
        self.layout: dict[str, Any] = {}
        self.gateway: Gateway | None = None
        self.done = asyncio.Event()
        self._tasks: set[asyncio.Future[Any]] = set()

    # -- messages from the supervisor --------------------------------------------------------------------------
    def handle(self, message: dict[str, Any]) -> None:
        op = message.get("op")
        if op == "start":
            self._spawn(self._start(message))
        elif op == "prepare":
            self._spawn(self._prepare(message))
        elif op == "commit":
            self._commit(message)
        elif op == "abort":
            self._spawn(self._abort(message))
        elif op == "sync":
            self._sync(message)
        elif op == "acme":
            self._acme(message)
        elif op == "collect":
            self._collect(message)
        elif op == "reopen":
            if self.gateway is not None:
                self.gateway.reopen_logs()
        elif op == "stop":
            self._spawn(self.stop(float(message.get("timeout", 0.0))))
        else:
            log.warning("worker %d: unknown control message %r", self.index, op)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _start(self, message: dict[str, Any]) -> None:
        gateway = Gateway(message["config"], admin="off", role=WORKER, generation=int(message["generation"]))
        gateway.on_generation = self._follow
        gateway.on_build = self._attach
        self.layout = message.get("layout", {})
        self.gateway = gateway
        gateway.apply_acme(message.get("acme", {}))  # stored ACME certificates, served from the first handshake
        try:
            await gateway.start()
        except (StartupError, ConfigError, OSError) as e:
            self.channel.reply(message, False, error=str(e))
            self.done.set()
            return
        addresses = gateway.bound_addresses()
        self.channel.reply(message, True, addresses=addresses, pid=os.getpid())
        gc.collect()
        gc.freeze()
        self._spawn(self._report())

    async def _prepare(self, message: dict[str, Any]) -> None:
        gateway = self.gateway
        if gateway is None:
            self.channel.reply(message, False, error="not started")
            return
        self.layout = message.get("layout", self.layout)
        try:
            await gateway.prepare_generation(message["config"], int(message["generation"]))
        except (StartupError, ConfigError, OSError) as e:
            self.channel.reply(message, False, error=str(e))
            return
        self.channel.reply(message, True)

    def _commit(self, message: dict[str, Any]) -> None:
        gateway = self.gateway
        try:
            if gateway is None:
                raise StartupError("not started")
            gateway.commit_generation(int(message["generation"]))
        except Exception as e:  # the supervisor replaces a worker that cannot apply a generation
            log.error("worker %d: cannot apply generation %s: %s", self.index, message.get("generation"), e)
            self.channel.reply(message, False, error=str(e))
            return
        self.channel.reply(message, True)

    async def _abort(self, message: dict[str, Any]) -> None:
        if self.gateway is not None:
            await self.gateway.abort_generation(int(message["generation"]))
        self.channel.reply(message, True)

    def _collect(self, message: dict[str, Any]) -> None:
        gateway = self.gateway
        if gateway is None or gateway.runtime is None:
            self.channel.reply(message, False, error="not started")
            return
        self.channel.reply(message, True, **snapshot(gateway))

    def _acme(self, message: dict[str, Any]) -> None:
        """ACME HTTP-01 answers and issued certificates from the supervisor (SPEC §10.4), applied before the reply
        (the supervisor asks the CA to validate only then)."""
        if self.gateway is not None:
            self.gateway.apply_acme(message.get("state", {}))
        self.channel.reply(message, True)

    def _sync(self, message: dict[str, Any]) -> None:
        """The supervisor's view of health, replicas and rollout splits (SPEC §13.4)."""
        gateway = self.gateway
        runtime = gateway.runtime if gateway is not None else None
        if gateway is None or runtime is None:
            return
        apply_sync(runtime, gateway, message)
        if "layout" in message:
            self.layout = message["layout"]
            attach(runtime, self.segment, self.layout, self.index)  # replicas that joined a scale target

    def _attach(self, runtime: Runtime) -> None:
        attach(runtime, self.segment, self.layout, self.index)

    # -- to the supervisor -------------------------------------------------------------------------------------
    def _follow(self, runtime: Runtime) -> None:
        """A generation runs: its scale targets send cold pokes to the supervisor."""
        for _, target in runtime.scale_targets.values():
            target.remote_poke = self._poke  # type: ignore[attr-defined]
        for svc in runtime.services.values():
            if svc.passive is not None:
                svc.passive.remote = self._eject

    def _eject(self, service: str, url: str, why: str) -> None:
        self.channel.send({"op": "eject", "service": service, "url": url, "why": why})

    def _poke(self, target: str) -> None:
        self.channel.send({"op": "poke", "target": target})

    async def _report(self) -> None:
        """Every second: in-flight and queued requests per scale target, rollout windows (SPEC §13.4)."""
        while True:
            await asyncio.sleep(REPORT_EVERY)
            gateway = self.gateway
            runtime = gateway.runtime if gateway is not None else None
            if runtime is None:
                continue
            self.channel.send(report(runtime))

    # -- the end -----------------------------------------------------------------------------------------------
    async def stop(self, timeout: float) -> None:
        gateway = self.gateway
        if gateway is not None and gateway.state not in (GatewayState.STOPPED, GatewayState.CREATED):
            await gateway.shutdown(timeout)
        self.done.set()


def report(runtime: Runtime) -> dict[str, Any]:
    """A worker's load report: (in-flight, queued) per scale target and the rollout windows' new samples."""
    targets = {name: len(target.queue)  # type: ignore[attr-defined]
               for name, (_, target) in runtime.scale_targets.items()}
    windows: dict[str, tuple[int, int, list[float]]] = {}
    for name, svc in runtime.services.items():
        rollout = svc.rollout
        if rollout is not None and rollout.window is not None:
            requests, errors, samples = rollout.window.drain()
            if requests or errors or samples:
                windows[name] = (requests, errors, samples)
    return {"op": "load", "targets": targets, "windows": windows}


def apply_sync(runtime: Runtime, gateway: Gateway, message: dict[str, Any]) -> None:
    """Apply the supervisor's health, replica endpoints, revision splits and ACME state to this worker."""
    if "acme" in message:
        gateway.apply_acme(message["acme"])
    for name, (endpoints, stand_in) in message.get("targets", {}).items():
        entry = runtime.scale_targets.get(name)
        if entry is not None:
            entry[1].follow_endpoints(endpoints, stand_in)  # type: ignore[attr-defined]
    health = gateway.live.health
    for service, url, healthy, ejected in message.get("health", ()):
        svc = runtime.services.get(service)
        if svc is None:
            continue
        for backend in svc.backends:
            if backend.url == url:
                state = health.get(service, backend)
                if state.healthy != healthy or state.ejected != ejected:
                    state.healthy = healthy
                    state.ejected = ejected
                    state.apply()
    for service, percents in message.get("splits", {}).items():
        svc = runtime.services.get(service)
        if svc is not None and isinstance(svc.balancer, RevisionSplit):
            for revision in svc.balancer.revisions:
                if revision.name in percents:
                    revision.percent = int(percents[revision.name])
    readings = message.get("inference")
    if readings:  # model-server metrics the supervisor scraped (SPEC §16.5)
        inference.apply_rows(dict(runtime.services), readings)
    for service, state in message.get("rollouts", {}).items():
        svc = runtime.services.get(service)
        if svc is not None and svc.rollout is not None:
            svc.rollout.state = state


async def _serve(fd: int, index: int, segment: Segment) -> int:
    sock = socket.socket(fileno=fd)
    channel = await Channel.open(sock)
    worker = Worker(channel, index, segment)
    loop = asyncio.get_running_loop()

    def on_term() -> None:  # the supervisor died (parent-death signal): drain briefly and go
        worker._spawn(worker.stop(1.0))

    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGTERM, on_term)
        loop.add_signal_handler(signal.SIGHUP, lambda: None)  # the supervisor reloads; workers follow it
        loop.add_signal_handler(signal.SIGUSR1, lambda: None)  # ... and tells them to reopen the access log
    serving = asyncio.ensure_future(channel.serve(worker.handle))
    done = asyncio.ensure_future(worker.done.wait())

    def connections() -> int:
        gateway = worker.gateway
        return sum(gateway.connection_counts().values()) if gateway is not None else 0

    trimmer = heap.start_trimmer(connections)
    await asyncio.wait({serving, done}, return_when=asyncio.FIRST_COMPLETED)
    heap.stop_trimmer(trimmer)
    if not worker.done.is_set():  # the channel ended: the supervisor is gone
        await worker.stop(1.0)
    serving.cancel()
    channel.close()
    return 0


def main(spec: str) -> int:
    """Entry of a worker process (from ``a3s_gateway.cli.main`` when ``A3S_GATEWAY_WORKER`` is set)."""
    fd_text, index_text, parent_text, segment_fd, segment_size = spec.split(",")
    die_with_parent(int(parent_text))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the supervisor handles it
    fd, index = int(fd_text), int(index_text)
    segment = shared_segment.attach(int(segment_fd), int(segment_size))
    heap.tune()  # the same allocator tuning as a single process (the worker carries the data plane)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - platforms without uvloop
        return asyncio.run(_serve(fd, index, segment))
    return uvloop.run(_serve(fd, index, segment))
