"""The ``process`` executor (SPEC §8.5): replicas are child processes of the gateway on this host.

``scale(desired)`` starts replicas (lowest free port of ``port_range``; ``{port}`` / ``{replica}`` substituted in the
command, ``PORT`` in the environment) and registers each as a not-ready endpoint of its target; the target's
readiness probe makes it eligible. Scaling down drains the replicas the target chooses (fewest in flight, newest on
ties): not eligible at once, stopped when idle or after ``drain_timeout``. Stopping is SIGTERM, then SIGKILL after
``stop_timeout``. A child that exits on its own leaves the pool at once and the target asks for a replacement;
consecutive failed starts back off 1 s, 2 s, 4 s … 60 s. Children get SIGTERM if the gateway dies (Linux
parent-death signal) and are stopped on shutdown. Child output is logged line by line.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import socket
import sys
from typing import TYPE_CHECKING, Any, Final

from . import ExecutorError

if TYPE_CHECKING:
    from ...config.model import ProcessExecutorConfig

log: Final = logging.getLogger("a3s_gateway.scaling.process")
child_log: Final = logging.getLogger("a3s_gateway.replica")

MAX_BACKOFF: Final = 60.0
DRAIN_POLL: Final = 0.05
_PR_SET_PDEATHSIG: Final = 1


def _parent_death_signal() -> None:  # pragma: no cover - runs in the child between fork and exec
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def _port_free(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


class Replica:
    __slots__ = ("draining", "exited", "number", "port", "proc", "ready", "stopping", "url", "watch")

    def __init__(self, number: int, port: int, url: str, proc: asyncio.subprocess.Process) -> None:
        self.number = number
        self.port = port
        self.url = url
        self.proc = proc
        self.ready = False
        self.draining = False
        self.stopping = False
        self.exited = asyncio.Event()
        self.watch: asyncio.Task[None] | None = None


class ProcessExecutor:
    """Local child processes as replicas of one scale target."""

    kind = "process"

    def __init__(self, target: str, cfg: ProcessExecutorConfig, sink: Any, config_dir: str = ".") -> None:
        self.target = target
        self.cfg = cfg
        self.sink = sink  # the ScaleTarget: add_endpoint / remove_endpoint / set_draining / choose_drain / ...
        self.cwd = cfg.working_dir or config_dir or "."
        self.replicas: dict[str, Replica] = {}  # by URL
        self._numbers = 0
        self._failures = 0  # consecutive failed starts
        self._not_before = 0.0  # back-off: no start before this loop time
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False

    # -- executor API ----------------------------------------------------------------------------------------
    def live(self) -> list[Replica]:
        return [r for r in self.replicas.values() if not r.draining and not r.stopping]

    async def scale(self, desired: int, current: int, reason: str) -> int:
        if self._closed:
            raise ExecutorError("executor closed")
        live = self.live()
        loop = asyncio.get_running_loop()
        if len(live) < desired:
            wait = self._not_before - loop.time()
            if wait > 0:
                raise ExecutorError(f"start backed off for {wait:.1f}s after {self._failures} failed start(s)")
            for _ in range(desired - len(live)):
                await self._start_one()
        elif len(live) > desired:
            victims = self.sink.choose_drain([r.url for r in live], len(live) - desired)
            for url in victims:
                replica = self.replicas[url]
                replica.draining = True
                self.sink.set_draining(url)
                self._spawn(self._drain(replica))
        return len(self.live())

    async def close(self) -> None:
        """Stop every child (gateway shutdown or the target went away)."""
        self._closed = True
        await asyncio.gather(*(self._stop(r) for r in list(self.replicas.values())), return_exceptions=True)
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- replicas ----------------------------------------------------------------------------------------------
    def _free_port(self) -> int:
        first, last = self.cfg.ports
        used = {r.port for r in self.replicas.values()}
        for port in range(first, last + 1):
            if port not in used and _port_free(self.cfg.host, port):
                return port
        raise ExecutorError(f"no free port in {self.cfg.port_range}")

    async def _start_one(self) -> None:
        cfg = self.cfg
        port = self._free_port()
        self._numbers += 1
        number = self._numbers
        subst = {"port": str(port), "replica": str(number)}
        argv = [_substitute(arg, subst) for arg in cfg.command]
        env = dict(os.environ)
        env.update(cfg.env)
        env["PORT"] = str(port)
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, cwd=self.cwd, env=env, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT, preexec_fn=_parent_death_signal,
            )
        except OSError as exc:
            self._failed_start()
            raise ExecutorError(f"cannot start {argv[0]!r}: {exc}") from exc
        host = f"[{cfg.host}]" if ":" in cfg.host else cfg.host
        url = f"{cfg.scheme}://{host}:{port}"
        replica = Replica(number, port, url, proc)
        self.replicas[url] = replica
        log.info("service %s: started replica %d (pid %d) on %s", self.target, number, proc.pid, url)
        replica.watch = self._spawn(self._watch(replica))
        self._spawn(self._startup_deadline(replica))
        self.sink.add_endpoint(url)

    def _failed_start(self) -> None:
        self._failures += 1
        delay = min(MAX_BACKOFF, 2.0 ** (self._failures - 1))
        self._not_before = asyncio.get_running_loop().time() + delay

    def ready(self, url: str) -> None:
        """The target saw the replica pass its readiness probe (ends the start back-off)."""
        replica = self.replicas.get(url)
        if replica is not None:
            replica.ready = True
            self._failures = 0

    async def _watch(self, replica: Replica) -> None:
        """Log the child's output line by line; on exit, take it out of the pool."""
        stream = replica.proc.stdout
        if stream is not None:
            while True:
                try:
                    line = await stream.readline()
                except (ValueError, OSError):  # a line over the stream limit, or the pipe broke
                    continue
                if not line:
                    break
                child_log.info(
                    "%s", line.decode("utf-8", "replace").rstrip(),
                    extra={"service": self.target, "replica": replica.number},
                )
        code = await replica.proc.wait()
        replica.exited.set()
        if self.replicas.get(replica.url) is replica:
            del self.replicas[replica.url]
        self.sink.remove_endpoint(replica.url)
        if not (replica.stopping or replica.draining):
            if not replica.ready:
                self._failed_start()
            log.warning("service %s: replica %d exited with code %s; it will be replaced", self.target,
                        replica.number, code)
            if not self._closed:
                self.sink.replica_lost()

    async def _startup_deadline(self, replica: Replica) -> None:
        try:
            await asyncio.wait_for(replica.exited.wait(), self.cfg.startup_timeout)
            return
        except asyncio.TimeoutError:
            pass
        if replica.ready or replica.stopping or replica.draining:
            return
        log.warning("service %s: replica %d not ready within %gs; stopping it", self.target, replica.number,
                    self.cfg.startup_timeout)
        self._failed_start()
        replica.draining = True  # a failed start, not a crash: the autoscaler's next tick starts another
        await self._stop(replica)
        self.sink.replica_lost()

    async def _drain(self, replica: Replica) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.cfg.drain_timeout
        while self.sink.in_flight_of(replica.url) > 0 and loop.time() < deadline and not replica.exited.is_set():
            await asyncio.sleep(DRAIN_POLL)
        await self._stop(replica)

    async def _stop(self, replica: Replica) -> None:
        replica.stopping = True
        proc = replica.proc
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(replica.exited.wait(), self.cfg.stop_timeout)
            except asyncio.TimeoutError:
                log.warning("service %s: replica %d did not stop within %gs; killing it", self.target,
                            replica.number, self.cfg.stop_timeout)
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
        if replica.watch is not None and not replica.watch.done():
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(asyncio.shield(replica.watch), 5.0)
        with contextlib.suppress(Exception):
            await proc.wait()

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task


def _substitute(arg: str, values: dict[str, str]) -> str:
    for key, value in values.items():
        arg = arg.replace("{" + key + "}", value)
    return arg
