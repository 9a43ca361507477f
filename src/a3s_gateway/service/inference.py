"""Model-server metrics for the ``inference`` strategy (SPEC §16.5): scraped in the control plane.

A :class:`Scraper` per service fetches ``metrics_path`` of every backend of its ``inference`` pools each
``scrape_interval`` (one scrape per backend at a time, each bounded by ``stale_after``), reads the queue, running
and KV-cache series from the Prometheus text and stores them on the :class:`~a3s_gateway.service.balancer.Backend`,
where :class:`~a3s_gateway.service.balancer.InferenceBalancer` reads them. With workers (§13.4) the supervisor
scrapes and sends the values down in its sync message (``rows``/``apply_rows``); workers never scrape.
A failed scrape changes nothing: the backend's metrics age and become stale after ``stale_after``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any, Final

from ..http.client import FetchError, Target, client_context, fetch
from .balancer import Backend, InferenceBalancer

if TYPE_CHECKING:
    from ..config.model import InferenceConfig, TransportConfig

log: Final = logging.getLogger("a3s_gateway.inference")

#: series of SPEC §16.5, first found wins: vLLM, SGLang, TGI
WAITING: Final = (b"vllm:num_requests_waiting", b"sglang:num_queue_reqs", b"tgi_queue_size")
RUNNING: Final = (b"vllm:num_requests_running", b"sglang:num_running_reqs", b"tgi_batch_current_size")
KV_USAGE: Final = (b"vllm:kv_cache_usage_perc", b"vllm:gpu_cache_usage_perc", b"sglang:token_usage")
_NAMES: Final = (*WAITING, *RUNNING, *KV_USAGE)
MAX_BODY: Final = 4 << 20  # a model server's /metrics is some 100 KiB; beyond this the scrape fails
MAX_LINES: Final = 100_000
_USER_AGENT: Final = b"a3s-gateway-inference"


def parse_metrics(text: bytes) -> tuple[float, float, float] | None:
    """(waiting, running, KV-cache use 0-1) from Prometheus text exposition; None when no waiting series is there.

    Samples of one series name are summed over their labels (one server may report per model or per engine);
    the KV-cache use is their maximum. Other lines, comments and unparsable samples are skipped."""
    sums: dict[bytes, float] = {}
    for count, line in enumerate(text.split(b"\n")):
        if count >= MAX_LINES:
            break
        if not line.startswith(_NAMES):
            continue
        brace = line.find(b"{")
        if brace >= 0:
            name = line[:brace]
            close = line.rfind(b"}")
            if close < brace:
                continue
            rest = line[close + 1:]
        else:
            name, _, rest = line.partition(b" ")
        fields = rest.split()
        if name not in _NAMES or not fields:
            continue
        try:
            value = float(fields[0])
        except ValueError:
            continue
        if value != value or value < 0.0 or value == float("inf"):  # NaN, negative, +Inf: no usable reading
            continue
        if name in KV_USAGE:
            sums[name] = max(sums.get(name, 0.0), value)
        else:
            sums[name] = sums.get(name, 0.0) + value
    waiting = _first(sums, WAITING)
    if waiting is None:
        return None
    running = _first(sums, RUNNING)
    kv = _first(sums, KV_USAGE)
    return waiting, running or 0.0, min(kv or 0.0, 1.0)


def _first(values: dict[bytes, float], names: tuple[bytes, ...]) -> float | None:
    for name in names:
        if name in values:
            return values[name]
    return None


class Scraper:
    """Scrapes the backends of a service's ``inference`` pools (SPEC §16.5)."""

    def __init__(self, service: str, balancers: list[InferenceBalancer], cfg: InferenceConfig,
                 transport: TransportConfig) -> None:
        self.service = service
        self.balancers = balancers
        self.cfg = cfg
        self.transport = transport
        self._task: asyncio.Task[None] | None = None
        self._busy: set[str] = set()  # backend URLs with a scrape in progress
        self._scrapes: set[asyncio.Task[None]] = set()
        self._targets: dict[str, Target] = {}
        self.failures = 0

    def backends(self) -> list[Backend]:
        """The backends scraped now (scale targets add and remove replicas at run time)."""
        return [b for balancer in self.balancers for b in balancer.backends]

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        tasks = [t for t in (self._task, *self._scrapes) if t is not None]
        self._task = None
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        interval = self.cfg.scrape_interval
        while True:
            for backend in self.backends():
                if backend.url not in self._busy and backend.scheme in ("http", "https", "h2c"):
                    self._busy.add(backend.url)
                    task = loop.create_task(self._scrape(backend))
                    self._scrapes.add(task)
                    task.add_done_callback(self._scrapes.discard)
            await asyncio.sleep(interval)

    def _target(self, backend: Backend) -> Target:
        target = self._targets.get(backend.url)
        if target is None:
            tls = backend.scheme == "https"
            host = f"[{backend.host}]" if ":" in backend.host else backend.host
            url = f"{'https' if tls else 'http'}://{host}:{backend.port}{backend.base_path}{self.cfg.metrics_path}"
            ctx = client_context(self.transport, ["http/1.1"]) if tls else None
            target = Target(url, ctx, self.transport.tls_server_name)
            target.host_header = backend.host_header.encode("idna")
            self._targets[backend.url] = target
        return target

    async def _scrape(self, backend: Backend) -> None:
        try:
            target = self._target(backend)
            result = await asyncio.wait_for(fetch(target, b"GET", [(b"User-Agent", _USER_AGENT)], MAX_BODY),
                                            self.cfg.stale_after)
            reading = parse_metrics(result.body) if result.status == 200 else None
            if reading is None:
                self.failures += 1
                log.debug("service %s: no model-server metrics from %s (status %d)", self.service, backend.url,
                          result.status)
                return
            store(backend, reading[0], reading[1], reading[2], time.monotonic())
        except (asyncio.TimeoutError, FetchError, OSError, ValueError) as exc:
            self.failures += 1
            log.debug("service %s: scraping %s failed: %r", self.service, backend.url, exc)
        finally:
            self._busy.discard(backend.url)


def store(backend: Backend, waiting: float, running: float, kv_usage: float, at: float) -> None:
    """A new reading of ``backend``: the picks counted since the previous one start again from 0."""
    backend.waiting = waiting
    backend.running = running
    backend.kv_usage = kv_usage
    backend.scraped_at = at
    backend.scrapes += 1
    backend.sent_since_scrape = 0


def rows(scrapers: dict[str, Scraper]) -> list[tuple[str, str, int, float, float, float, float]]:
    """What the supervisor sends its workers: (service, URL, scrape number, waiting, running, kv, when) of every
    backend with a reading; ``when`` is ``time.monotonic()``, one clock for every process of the machine, so the
    message changes only with a new scrape (the supervisor sends a sync only when it changed)."""
    out: list[tuple[str, str, int, float, float, float, float]] = []
    for name, scraper in scrapers.items():
        for b in scraper.backends():
            if b.scraped_at >= 0.0:
                out.append((name, b.url, b.scrapes, b.waiting, b.running, b.kv_usage, b.scraped_at))
    return out


def apply_rows(services: dict[str, Any], data: list[Any]) -> None:
    """A worker takes the supervisor's readings (a reading it has already is left alone, so its picks since that
    scrape keep counting)."""
    for service, url, number, waiting, running, kv, when in data:
        svc = services.get(service)
        if svc is None:
            continue
        for b in svc.backends:
            if b.url == url and b.scrapes != number:
                store(b, float(waiting), float(running), float(kv), float(when))
                b.scrapes = int(number)
