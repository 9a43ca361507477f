"""The supervisor of N worker processes (SPEC §3.9, §13.4).

The supervisor owns the control plane: it loads, validates and reloads the configuration, watches the files, runs
the active health checks (once per instance), the autoscalers and executors, the rollouts, and the admin listener.
Its own :class:`~a3s_gateway.gateway.Gateway` runs in the ``supervisor`` role: the same generations, but no
entrypoint is bound. The workers own the data plane: each binds every entrypoint with ``SO_REUSEPORT``.

Generations are all or nothing across the workers: a reload is built in the supervisor, then every worker prepares
it (builds it, binds new listeners); only when all did is it committed everywhere, else every worker drops it. A
worker that cannot commit, or exits, is replaced (back-off 1 s → 30 s) while the others serve; the replacement
starts on the running generation.

Every ``SYNC_EVERY`` the supervisor sends each worker what changed of the backends' health, the scale targets'
replicas and the revision splits. Workers report their load every second and cold pokes at once. ``/metrics`` and
the admin API first collect a snapshot from every worker and show the instance totals (``aggregate.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import pickle
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector

from .. import segment as shared_segment
from ..config.model import EntrypointConfig, GatewayConfig
from ..errors import StartupError
from ..gateway import SUPERVISOR, Gateway, GatewayState
from ..runtime import Runtime
from ..service import inference
from ..service.revision import RevisionSplit
from .aggregate import MergedCollector
from .channel import Channel, ChannelClosed
from .shared import SEGMENT_BYTES, Layout, attach
from .worker import ENV

log: Final = logging.getLogger("a3s_gateway.supervisor")

START_TIMEOUT: Final = 60.0  # a worker builds its first generation and binds its listeners
PREPARE_TIMEOUT: Final = 60.0
COLLECT_TIMEOUT: Final = 2.0
SYNC_EVERY: Final = 0.05
BACKOFF_FIRST: Final = 1.0
BACKOFF_MAX: Final = 30.0
STABLE_AFTER: Final = 10.0  # a worker that lived this long resets the back-off
KILL_GRACE: Final = 5.0  # after the drain deadline, before SIGKILL


def worker_command() -> list[str]:
    """How to start this installation again: the one-file binary, or the interpreter with ``-m a3s_gateway``."""
    if getattr(sys, "frozen", False):
        return [sys.executable]
    return [sys.executable, "-m", "a3s_gateway"]


@dataclasses.dataclass(eq=False)
class WorkerProcess:
    index: int
    process: asyncio.subprocess.Process
    channel: Channel
    started: float
    reader: asyncio.Future[None] | None = None
    synced: bytes = b""  # the last sync message sent

    @property
    def pid(self) -> int:
        return int(self.process.pid)


class Supervisor:
    """A supervisor gateway and its workers; :meth:`run` until stopped (SPEC §13.4)."""

    def __init__(self, config: GatewayConfig, workers: int, *, admin: str | None = None,
                 log_args: tuple[str, ...] = ()) -> None:
        if workers < 2:
            raise ValueError("a supervisor runs at least 2 workers")
        self.count = workers
        self.gateway = Gateway(config, admin=admin, role=SUPERVISOR)
        self.gateway.peers = self
        self.gateway.remote = self
        self.workers: dict[int, WorkerProcess] = {}
        self.addresses: dict[str, tuple[str, int]] = {}
        self.stopped = asyncio.Event()
        self.stopping = False
        self._log_args = log_args
        self._reserved: dict[tuple[str, str, str], socket.socket | int] = {}
        self._shipped: GatewayConfig = config  # the running generation's configuration, as the workers got it
        self._pending: GatewayConfig | None = None
        self._snapshots: dict[int, dict[str, Any]] = {}
        self._failures: dict[int, int] = {}
        self._tasks: set[asyncio.Future[Any]] = set()
        self._sync_task: asyncio.Future[None] | None = None
        #: the shared-memory segment every worker maps, and where each shared number lives in it
        self.segment = shared_segment.create(SEGMENT_BYTES)
        self.layout = Layout(workers, self.segment.words)
        self._shutdown_task: asyncio.Future[None] | None = None
        registry = CollectorRegistry(auto_describe=False)
        registry.register(MergedCollector(self.gateway, lambda: [s["families"] for s in self._snapshots.values()]))
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)
        self.gateway.registry = registry

    # -- start -------------------------------------------------------------------------------------------------
    async def start(self) -> None:
        """Start the control plane, then every worker on generation 1 (StartupError: everything stopped)."""
        self.gateway.on_build = self._attach
        await self.gateway.start()
        admin = self.gateway._admin
        if admin is not None:
            admin.refresh = self.refresh
        try:
            # no reload commits while the workers start: a generation committed meanwhile (a provider's first
            # contribution, a file save) would reach none of them, and they would serve the one they started on
            async with self.gateway.reload_lock:
                self._shipped = self._concrete(self.gateway.config)
                started = await asyncio.gather(*(self._spawn(i, self._shipped, self.gateway.generation)
                                                 for i in range(self.count)), return_exceptions=True)
            errors = [r for r in started if isinstance(r, BaseException)]
            if errors:
                raise errors[0] if isinstance(errors[0], StartupError) else StartupError(str(errors[0]))
        except BaseException:
            await self._stop_workers(0.0)
            self._close_reservations(set())
            await self.gateway.shutdown(0.0)
            raise
        self._sync_task = asyncio.ensure_future(self._sync_loop())
        self.gateway.start_acme()  # the workers listen now: they can answer the CA's HTTP-01 validation

    def _attach(self, runtime: Runtime) -> None:
        """A generation built here: give its backends and rate limits their places; the supervisor's own objects
        read the instance's counts there."""
        self.layout.allocate(runtime)
        attach(runtime, self.segment, self.layout.message(), self.layout.supervisor)

    async def _spawn(self, index: int, config: GatewayConfig, generation: int) -> WorkerProcess:
        """Start worker ``index`` on ``generation`` and wait until it serves (StartupError when it cannot)."""
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        env = dict(os.environ)
        env[ENV] = f"{child.fileno()},{index},{os.getpid()},{self.segment.fd},{self.segment.size}"
        try:
            process = await asyncio.create_subprocess_exec(
                *worker_command(), *self._log_args, pass_fds=(child.fileno(), self.segment.fd), env=env,
                stdin=asyncio.subprocess.DEVNULL,
            )
        except OSError as e:
            parent.close()
            raise StartupError(f"cannot start worker {index}: {e}") from e
        finally:
            child.close()
        channel = await Channel.open(parent)
        worker = WorkerProcess(index, process, channel, time.monotonic())
        worker.reader = asyncio.ensure_future(channel.serve(lambda m: self._on_message(worker, m)))
        try:
            reply = await channel.call({"op": "start", "config": config, "generation": generation,
                                        "layout": self.layout.message(), "acme": self.gateway.acme_state()},
                                       START_TIMEOUT)
        except (ChannelClosed, asyncio.TimeoutError) as e:
            await self._kill(worker)
            raise StartupError(f"worker {index} did not start: {e or 'timed out'}") from e
        if not reply.get("ok"):
            await self._kill(worker)
            raise StartupError(str(reply.get("error")))
        self.addresses = {k: (str(v[0]), int(v[1])) for k, v in reply.get("addresses", {}).items()}
        self.workers[index] = worker
        self._failures.setdefault(index, 0)
        self._spawn_task(self._watch(worker))
        log.info("worker %d running (pid %d, generation %d)", index, worker.pid, generation)
        return worker

    async def _kill(self, worker: WorkerProcess) -> None:
        with contextlib.suppress(ProcessLookupError):
            worker.process.kill()
        await worker.process.wait()
        worker.channel.close()

    def _spawn_task(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- faults ------------------------------------------------------------------------------------------------
    async def _watch(self, worker: WorkerProcess) -> None:
        """Replace a worker that exits while the instance runs (back-off 1 s → 30 s)."""
        code = await worker.process.wait()
        worker.channel.close()
        if self.workers.get(worker.index) is worker:
            del self.workers[worker.index]
        self._snapshots.pop(worker.index, None)
        self.layout.forget_worker(self.segment, worker.index)  # its requests are gone with it
        runtime = self.gateway.runtime
        if runtime is not None:
            for _, target in runtime.scale_targets.values():
                target.remote_queued.pop(worker.index, None)  # type: ignore[attr-defined]
        if self.stopping:
            return
        lived = time.monotonic() - worker.started
        failures = 0 if lived >= STABLE_AFTER else self._failures.get(worker.index, 0) + 1
        delay = min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** max(0, failures - 1))
        log.error("worker %d (pid %d) exited with %s after %.1fs; starting a replacement in %.0fs",
                  worker.index, worker.pid, _exit_text(code), lived, delay)
        while not self.stopping:
            self._failures[worker.index] = failures
            await asyncio.sleep(delay)
            if self.stopping:
                return
            try:
                async with self.gateway.reload_lock:  # as in start(): on the generation that runs when it is up
                    await self._spawn(worker.index, self._shipped, self.gateway.generation)
                return
            except StartupError as e:
                failures += 1
                delay = min(BACKOFF_MAX, delay * 2)
                log.error("worker %d could not start: %s; next attempt in %.0fs", worker.index, e, delay)

    # -- generations (gateway.Peers) ---------------------------------------------------------------------------
    async def prepare(self, config: GatewayConfig, runtime: Runtime) -> None:
        concrete = self._concrete(config)
        workers = list(self.workers.values())
        message = {"op": "prepare", "config": concrete, "generation": runtime.generation,
                   "layout": self.layout.message()}
        replies = await asyncio.gather(*(w.channel.call(message, PREPARE_TIMEOUT) for w in workers),
                                       return_exceptions=True)
        for worker, reply in zip(workers, replies, strict=True):
            if isinstance(reply, BaseException):
                raise StartupError(f"worker {worker.index}: {reply or 'timed out'}")
            if not reply.get("ok"):
                raise StartupError(str(reply.get("error")))
        self._pending = concrete

    async def commit(self, generation: int) -> None:
        if self._pending is not None:
            self._shipped = self._pending
            self._pending = None
        self._close_reservations({(n, ep.host, ep.protocol) for n, ep in self._shipped.entrypoints.items()})
        await asyncio.gather(*(self._commit(w, generation) for w in list(self.workers.values())))

    async def _commit(self, worker: WorkerProcess, generation: int) -> None:
        try:
            reply = await worker.channel.call({"op": "commit", "generation": generation}, PREPARE_TIMEOUT)
            ok, error = bool(reply.get("ok")), reply.get("error")
        except (ChannelClosed, asyncio.TimeoutError) as e:
            ok, error = False, str(e) or "timed out"
        if not ok and not self.stopping:
            log.error("worker %d could not apply generation %d (%s): replacing it", worker.index, generation, error)
            with contextlib.suppress(ProcessLookupError):
                worker.process.kill()  # _watch starts the replacement on the running generation

    async def abort(self, generation: int) -> None:
        self._pending = None
        await asyncio.gather(*(w.channel.call({"op": "abort", "generation": generation}, PREPARE_TIMEOUT)
                               for w in list(self.workers.values())), return_exceptions=True)

    async def publish_acme(self, state: dict[str, Any]) -> None:
        """ACME HTTP-01 answers and issued certificates (SPEC §10.4): every worker has them when this returns (a
        worker that does not answer gets them with the next sync)."""
        await asyncio.gather(*(w.channel.call({"op": "acme", "state": state}, PREPARE_TIMEOUT)
                               for w in list(self.workers.values())), return_exceptions=True)

    # -- entrypoints with port 0 -------------------------------------------------------------------------------
    def _concrete(self, config: GatewayConfig) -> GatewayConfig:
        """``config`` with every port 0 replaced by one port for all workers (kept while the entrypoint is)."""
        entrypoints: dict[str, EntrypointConfig] = {}
        changed = False
        for name, ep in config.entrypoints.items():
            if ep.port != 0:
                entrypoints[name] = ep
                continue
            key = (name, ep.host, ep.protocol)
            held = self._reserved.get(key)
            if held is None:
                held = self._reserved[key] = _reserve(ep)
            port = held if isinstance(held, int) else int(held.getsockname()[1])
            host = f"[{ep.host}]" if ":" in ep.host else ep.host
            entrypoints[name] = dataclasses.replace(ep, port=port, address=f"{host}:{port}")
            changed = True
        return dataclasses.replace(config, entrypoints=entrypoints) if changed else config

    def _close_reservations(self, keep: set[tuple[str, str, str]]) -> None:
        for key in [k for k in self._reserved if k not in keep]:
            held = self._reserved.pop(key)
            if isinstance(held, socket.socket):
                held.close()

    # -- messages from workers ---------------------------------------------------------------------------------
    def _on_message(self, worker: WorkerProcess, message: dict[str, Any]) -> None:
        runtime = self.gateway.runtime
        if runtime is None:
            return
        op = message.get("op")
        if op == "poke":
            entry = runtime.scale_targets.get(message.get("target", ""))
            if entry is not None:
                target: Any = entry[1]
                if target.ready_count() == 0:
                    target.poke()  # a cold start: scale now, not at the next tick
        elif op == "load":
            for name, queued in message.get("targets", {}).items():
                entry = runtime.scale_targets.get(name)
                if entry is not None:
                    entry[1].remote_queued[worker.index] = int(queued)  # type: ignore[attr-defined]
            for service, (requests, errors, samples) in message.get("windows", {}).items():
                svc = runtime.services.get(service)
                if svc is not None and svc.rollout is not None and svc.rollout.window is not None:
                    svc.rollout.window.merge(requests, errors, samples)
        elif op == "eject":
            service, url = message.get("service", ""), message.get("url", "")
            svc = runtime.services.get(service)
            if svc is not None and svc.passive is not None:
                for backend in svc.backends:
                    if backend.url == url:
                        svc.passive.eject_reported(backend, asyncio.get_running_loop().time(),
                                                   f"{message.get('why')} in worker {worker.index}")
        else:
            log.warning("supervisor: unknown message %r from worker %d", op, worker.index)

    # -- health, replicas and splits down ----------------------------------------------------------------------
    async def _sync_loop(self) -> None:
        while True:
            await asyncio.sleep(SYNC_EVERY)
            runtime = self.gateway.runtime
            if runtime is None:
                continue
            if self.layout.allocate(runtime):  # replicas that joined a scale target
                attach(runtime, self.segment, self.layout.message(), self.layout.supervisor)
            message = sync_message(runtime, self.gateway)
            message["layout"] = self.layout.message()
            data = pickle.dumps(message)
            for worker in list(self.workers.values()):
                if worker.synced != data:
                    worker.synced = data
                    worker.channel.send(message)

    # -- what the admin API shows (gateway.RemoteView) ---------------------------------------------------------
    async def refresh(self) -> None:
        """Collect every worker's snapshot (before ``/metrics`` and the admin API answer)."""
        workers = list(self.workers.values())
        replies = await asyncio.gather(*(w.channel.call({"op": "collect"}, COLLECT_TIMEOUT) for w in workers),
                                       return_exceptions=True)
        snapshots: dict[int, dict[str, Any]] = {}
        for worker, reply in zip(workers, replies, strict=True):
            if isinstance(reply, dict) and reply.get("ok"):
                snapshots[worker.index] = reply
            elif worker.index in self._snapshots:
                snapshots[worker.index] = self._snapshots[worker.index]  # its last numbers rather than none
        self._snapshots = snapshots

    def total_requests(self) -> int:
        return sum(int(s.get("total_requests", 0)) for s in self._snapshots.values())

    def connection_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {name: 0 for name in self._shipped.entrypoints}
        for s in self._snapshots.values():
            for name, n in s.get("connections", {}).items():
                counts[name] = counts.get(name, 0) + int(n)
        return counts

    def workers_view(self) -> list[dict[str, Any]]:
        """One row per worker for the health body: index, pid, requests served and open connections."""
        rows = []
        for index in sorted(self.workers):
            worker = self.workers[index]
            snap = self._snapshots.get(index, {})
            rows.append({"index": index, "pid": worker.pid, "requests": int(snap.get("total_requests", 0)),
                         "connections": sum(int(n) for n in snap.get("connections", {}).values())})
        return rows

    # -- signals and the end -----------------------------------------------------------------------------------
    def reload_from_files(self) -> None:
        self._spawn_task(self.gateway._reload_from_files())

    def reopen_logs(self) -> None:
        self.gateway.reopen_logs()
        for worker in self.workers.values():
            worker.channel.send({"op": "reopen"})

    def shutdown(self, timeout: float | None = None) -> asyncio.Future[None]:
        """Drain every worker within ``timeout`` (default ``shutdown_timeout``), then stop the control plane."""
        if self._shutdown_task is None or (timeout == 0.0 and not self._shutdown_task.done()):
            previous = self._shutdown_task
            self._shutdown_task = asyncio.ensure_future(self._shutdown(timeout, previous))
        return self._shutdown_task

    async def _shutdown(self, timeout: float | None, previous: asyncio.Future[None] | None) -> None:
        self.stopping = True
        limit = self.gateway.config.shutdown_timeout if timeout is None else timeout
        if self.gateway.state in (GatewayState.RUNNING, GatewayState.RELOADING):
            self.gateway.state = GatewayState.STOPPING  # health answers 503 while the workers drain
        if self._sync_task is not None:
            self._sync_task.cancel()
        await self._stop_workers(limit)
        if previous is not None:
            previous.cancel()
        self._close_reservations(set())
        await self.gateway.shutdown(0.0 if timeout == 0.0 else None)
        self.segment.close()
        for task in list(self._tasks):
            task.cancel()
        self.stopped.set()

    async def _stop_workers(self, limit: float) -> None:
        workers = list(self.workers.values())
        for worker in workers:
            worker.channel.send({"op": "stop", "timeout": limit})
        waits = [asyncio.ensure_future(w.process.wait()) for w in workers]
        if waits:
            _, pending = await asyncio.wait(waits, timeout=limit + KILL_GRACE)
            if pending:
                for worker in workers:
                    if worker.process.returncode is None:
                        log.warning("worker %d (pid %d) did not stop in time: killed", worker.index, worker.pid)
                        with contextlib.suppress(ProcessLookupError):
                            worker.process.kill()
                await asyncio.wait(pending)
        for worker in workers:
            worker.channel.close()

    def install_signals(self) -> Callable[[], None]:
        """SIGTERM/SIGINT drain (a second one stops at once), SIGHUP reloads, SIGUSR1 reopens the access logs."""
        loop = asyncio.get_running_loop()
        signals = 0

        def on_stop() -> None:
            nonlocal signals
            signals += 1
            if signals == 1:
                log.info("shutting down %d workers (draining for up to %.0fs)", len(self.workers),
                         self.gateway.config.shutdown_timeout)
                self.shutdown()
            else:
                self.shutdown(0.0)

        installed = []
        for sig, handler in ((signal.SIGTERM, on_stop), (signal.SIGINT, on_stop),
                             (signal.SIGHUP, self.reload_from_files), (signal.SIGUSR1, self.reopen_logs)):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, handler)
                installed.append(sig)

        def remove() -> None:
            for sig in installed:
                loop.remove_signal_handler(sig)

        return remove


def sync_message(runtime: Runtime, gateway: Gateway) -> dict[str, Any]:
    """What the workers take from the supervisor: active health, replicas with readiness, revision splits."""
    health = gateway.live.health
    rows: list[tuple[str, str, bool, bool]] = []
    targets: dict[str, tuple[list[tuple[str, bool, bool]], int | None]] = {}
    splits: dict[str, dict[str, int]] = {}
    rollouts: dict[str, str] = {}
    for name, svc in runtime.services.items():
        for state in health.service(name):
            rows.append((name, state.backend.url, state.healthy, state.ejected))
        if isinstance(svc.balancer, RevisionSplit):
            splits[name] = {r.name: r.percent for r in svc.balancer.revisions}
        if svc.rollout is not None:
            rollouts[name] = svc.rollout.state
    for name, (_, target) in runtime.scale_targets.items():
        endpoints = []
        for backend in target.backends:
            state = health.get(target.service, backend)
            endpoints.append((backend.url, state.ready, state.draining))
        targets[name] = (endpoints, getattr(target, "stand_in", None))
    scrapers = {name: svc.scraper for name, svc in runtime.services.items() if svc.scraper is not None}
    return {"op": "sync", "health": rows, "targets": targets, "splits": splits, "rollouts": rollouts,
            "acme": gateway.acme_state(), "inference": inference.rows(scrapers) if scrapers else []}


def _reserve(ep: EntrypointConfig) -> socket.socket | int:
    """A concrete port for an entrypoint written with port 0: a TCP socket bound to it (not listening, so the
    kernel hands it no connection) kept while the entrypoint exists; for UDP the port itself (a bound UDP socket
    would take its share of the datagrams)."""
    host = ep.host or "0.0.0.0"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    kind = socket.SOCK_DGRAM if ep.protocol == "udp" else socket.SOCK_STREAM
    sock = socket.socket(family, kind)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if hasattr(socket, "SO_REUSEPORT"):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, 0))
    except OSError as e:
        sock.close()
        raise StartupError(f"entrypoint {ep.name!r}: cannot listen on {ep.address}: {e.strerror or e}") from e
    if kind == socket.SOCK_DGRAM:
        port = int(sock.getsockname()[1])
        sock.close()
        return port
    return sock


def _exit_text(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return signal.Signals(-code).name
        except ValueError:
            pass
    return f"status {code}"


async def serve(config: GatewayConfig, workers: int, admin: str | None, log_args: tuple[str, ...]) -> int:
    """``a3s-gateway`` with ``workers > 1``: run a supervisor until a signal stops it (exit codes of SPEC §13.1)."""
    from .._version import __version__

    supervisor = Supervisor(config, workers, admin=admin, log_args=log_args)
    remove = supervisor.install_signals()
    try:
        try:
            await supervisor.start()
        except StartupError as e:
            print(f"error: {e}", file=sys.stderr)
            return 3
        for name, (host, port) in supervisor.addresses.items():
            print(f"a3s-gateway {__version__}: entrypoint {name} on {host or '*'}:{port} ({workers} workers)",
                  file=sys.stderr, flush=True)
        admin_at = supervisor.gateway.admin_address()
        if admin_at is not None:
            print(f"a3s-gateway {__version__}: admin API on {admin_at[0]}:{admin_at[1]}", file=sys.stderr,
                  flush=True)
        if supervisor.gateway._stop_requested:
            supervisor.shutdown()
        await supervisor.stopped.wait()
        return 0
    finally:
        remove()
