"""Backends and load-balancing strategies (SPEC §3.3 servers, §7.2).

Compiled by mypyc (the same source runs interpreted): native classes with one ``pick`` method, no closures,
``Final`` constants. Randomness is injected (``rng``) so tests are exact. Only eligible backends take part, in
configuration order; a pick allocates nothing.
"""

from __future__ import annotations

import hashlib
import random
import time
from typing import Any, Final
from urllib.parse import urlsplit

from ..config.model import DEFAULT_PORTS
from ..observability.stats import CodeCounter

SCHEMES: Final = ("http", "https", "h2c", "tcp", "udp")
STRATEGIES: Final = ("round-robin", "weighted", "least-connections", "random", "p2c", "inference")
_MASK64: Final = (1 << 64) - 1


class Backend:
    """One upstream server: parsed URL, weight, and the mutable ``eligible`` / ``in_flight`` state."""

    def __init__(self, url: str, weight: int = 1) -> None:
        if weight < 0:
            raise ValueError(f"weight must be >= 0, got {weight}")
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in SCHEMES:
            raise ValueError(f"unsupported scheme {parts.scheme!r} in {url!r} (use http, https, h2c, tcp or udp)")
        if parts.query or parts.fragment or "?" in url or "#" in url:
            raise ValueError(f"backend URL {url!r} must not have a query or fragment")
        if parts.username is not None or parts.password is not None:
            raise ValueError(f"backend URL {url!r} must not carry credentials")
        host = parts.hostname
        if not host:
            raise ValueError(f"backend URL {url!r} has no host")
        try:
            explicit_port = parts.port
        except ValueError as exc:
            raise ValueError(f"backend URL {url!r} has an invalid port") from exc
        if explicit_port is None:
            default = DEFAULT_PORTS.get(scheme)
            if default is None:
                raise ValueError(f"backend URL {url!r} needs a port ({scheme}://host:port)")
            port = default
        else:
            port = explicit_port
        if port == 0:
            raise ValueError(f"backend URL {url!r} has an invalid port")
        path = parts.path
        if scheme in ("tcp", "udp") and path not in ("", "/"):
            raise ValueError(f"backend URL {url!r}: a {scheme} backend has no path")
        self.url = url
        self.scheme = scheme
        self.host = host
        self.port = port
        self.base_path = path.rstrip("/")
        self.weight = weight
        bracketed = f"[{host}]" if ":" in host else host
        default_port = explicit_port is None or port == DEFAULT_PORTS.get(scheme)
        self.host_header = bracketed if default_port else f"{bracketed}:{port}"
        self.eligible = True
        self.in_flight = 0  # this process's requests/tunnels on it (see ``load`` for the instance's)
        #: its in-flight counter in the shared segment of a supervisor's workers (SPEC §13.4); -1: none
        self.slot = -1
        self.own = -1  # this worker's part of that count
        self.shared: Any = None  # that segment (a3s_gateway.segment.Segment)
        self.codes = CodeCounter()  # attempts by status (gateway_backend_requests_total)
        self.passive: Any = None  # the service's PassiveHealth (outcomes of attempts are reported to it)
        self.revision = ""  # the revision pool it belongs to (§8.6), "" without revisions
        self.target: Any = None  # the scale target it is a replica of (§8), told when a request on it ends
        self.window: Any = None  # the rollout window of its revision while it is a rollout's `to` (§8.7)
        # what the model server reports (``inference`` strategy, SPEC §16.5), set by the scraper (or, in a worker,
        # by the supervisor's sync): requests waiting and running, KV-cache use (0-1), when (time.monotonic(); < 0:
        # never), a sequence number of scrapes, and the picks of this process since that scrape
        self.waiting = 0.0
        self.running = 0.0
        self.kv_usage = 0.0
        self.scraped_at = -1.0
        self.scrapes = 0
        self.sent_since_scrape = 0
        self.prefix_hits = 0  # picks of it as its prompt prefix's backend (gateway_inference_prefix_hits_total)
        #: stable 64-bit identity of the URL for rendezvous hashing (prefix affinity, §16.5)
        self.ident = int.from_bytes(hashlib.blake2b(url.encode(), digest_size=8).digest(), "big")

    def __repr__(self) -> str:
        return f"Backend({self.url!r}, weight={self.weight})"

    def acquire(self) -> None:
        """A request or tunnel starts on it (counted from the pick, so connects in progress count)."""
        self.in_flight += 1
        if self.slot >= 0:
            shared = self.shared
            shared.add(self.slot, 1)
            shared.add(self.own, 1)

    def release(self) -> None:
        self.in_flight -= 1
        if self.slot >= 0:
            shared = self.shared
            shared.add(self.slot, -1)
            shared.add(self.own, -1)

    def load(self) -> int:
        """In flight on it across the instance: every worker's (the shared segment), else this process's."""
        if self.slot >= 0:
            return int(self.shared.get(self.slot))
        return self.in_flight

    def share(self, segment: Any, slot: int, own: int) -> None:
        """Count in word ``slot`` of ``segment`` (the instance's total) and in word ``own`` (this worker's part,
        which the supervisor takes back out of the total if the worker dies) from now on; what is in flight here
        already moves there."""
        if slot == self.slot and own == self.own and segment is self.shared:
            return
        if self.slot >= 0:
            self.shared.add(self.slot, -self.in_flight)
            self.shared.add(self.own, -self.in_flight)
        self.shared = segment
        self.slot = slot
        self.own = own
        if slot >= 0:
            segment.add(slot, self.in_flight)
            segment.add(own, self.in_flight)


class Balancer:
    """Picks one eligible backend per call; cursors are per balancer (pool)."""

    def __init__(self, backends: list[Backend]) -> None:
        self.backends = backends

    def pick(self) -> Backend | None:
        """An eligible backend, in the strategy's order, or None when none is eligible."""
        raise NotImplementedError

    def pick_keyed(self, key: int) -> Backend | None:
        """As :meth:`pick`, for a request with a prompt-prefix hash ``key`` (>= 0): only the ``inference``
        strategy uses it (SPEC §16.5)."""
        return self.pick()

    def eligible_count(self) -> int:
        """Number of eligible backends."""
        count = 0
        for backend in self.backends:
            if backend.eligible:
                count += 1
        return count

    def nth_eligible(self, index: int) -> Backend:
        """The ``index``-th eligible backend in configuration order (0 <= index < eligible_count())."""
        for backend in self.backends:
            if backend.eligible:
                if index == 0:
                    return backend
                index -= 1
        raise IndexError(index)


class RoundRobinBalancer(Balancer):
    """``eligible[i mod n]``, then ``i += 1``; weights ignored."""

    def __init__(self, backends: list[Backend]) -> None:
        super().__init__(backends)
        self.counter = 0

    def pick(self) -> Backend | None:
        n = self.eligible_count()
        if n == 0:
            return None
        i = self.counter
        self.counter = i + 1
        if n == len(self.backends):
            return self.backends[i % n]
        return self.nth_eligible(i % n)


class WeightedBalancer(Balancer):
    """Smooth weighted round-robin: ``cw += weight`` for all, pick the largest (first on ties), subtract the total."""

    def __init__(self, backends: list[Backend]) -> None:
        super().__init__(backends)
        self.current: list[int] = [0] * len(backends)

    def pick(self) -> Backend | None:
        backends = self.backends
        current = self.current
        if len(current) != len(backends):  # the pool was resized in place: restart the schedule
            current = [0] * len(backends)
            self.current = current
        total = 0
        best = -1
        best_cw = 0
        for idx in range(len(backends)):
            backend = backends[idx]
            weight = backend.weight
            if not backend.eligible or weight <= 0:
                continue  # weight 0 never takes part, so it is never picked
            cw = current[idx] + weight
            current[idx] = cw
            total += weight
            if best < 0 or cw > best_cw:
                best = idx
                best_cw = cw
        if best < 0:
            return None
        current[best] = best_cw - total
        return backends[best]


class LeastConnectionsBalancer(Balancer):
    """Fewest ``in_flight``; ties broken round-robin: the first tied backend after the last pick, cyclically."""

    def __init__(self, backends: list[Backend]) -> None:
        super().__init__(backends)
        self.last = -1  # position of the previous pick in ``backends``

    def pick(self) -> Backend | None:
        backends = self.backends
        last = self.last
        lowest = -1
        first = -1  # first backend with the lowest load
        after = -1  # first backend with the lowest load positioned after ``last``
        for idx in range(len(backends)):
            backend = backends[idx]
            if not backend.eligible:
                continue
            load = backend.load()
            if lowest < 0 or load < lowest:
                lowest = load
                first = idx
                after = idx if idx > last else -1
            elif load == lowest and after < 0 and idx > last:
                after = idx
        if first < 0:
            return None
        chosen = after if after >= 0 else first
        self.last = chosen
        return backends[chosen]


class RandomBalancer(Balancer):
    """Uniformly random eligible backend."""

    def __init__(self, backends: list[Backend], rng: random.Random) -> None:
        super().__init__(backends)
        self.rng = rng

    def pick(self) -> Backend | None:
        n = self.eligible_count()
        if n == 0:
            return None
        return self.nth_eligible(self.rng.randrange(n))


class P2CBalancer(Balancer):
    """Power of two choices: two distinct random eligible backends, the one with fewer in-flight (tie: first drawn)."""

    def __init__(self, backends: list[Backend], rng: random.Random) -> None:
        super().__init__(backends)
        self.rng = rng

    def pick(self) -> Backend | None:
        n = self.eligible_count()
        if n == 0:
            return None
        if n == 1:
            return self.nth_eligible(0)
        i = self.rng.randrange(n)
        j = self.rng.randrange(n - 1)
        if j >= i:
            j += 1
        first = self.nth_eligible(i)
        second = self.nth_eligible(j)
        return second if second.load() < first.load() else first


class CappedBalancer(Balancer):
    """A per-replica hard limit (``container_concurrency``, SPEC §8.1) over another strategy: a backend with
    ``limit`` requests in flight is skipped; None when every eligible backend is full."""

    def __init__(self, inner: Balancer, limit: int) -> None:
        super().__init__(inner.backends)
        self.inner = inner
        self.limit = limit

    def pick(self) -> Backend | None:
        return self.pick_keyed(-1)

    def pick_keyed(self, key: int) -> Backend | None:
        limit = self.limit
        for _ in range(len(self.backends)):
            backend = self.inner.pick() if key < 0 else self.inner.pick_keyed(key)
            if backend is None:
                return None
            if backend.load() < limit:
                return backend
        return None

    def free_slots(self) -> int:
        """Requests the eligible backends can take now."""
        free = 0
        for backend in self.backends:
            if backend.eligible:
                load = backend.load()
                if load < self.limit:
                    free += self.limit - load
        return free


def _mix(key: int, ident: int) -> int:
    """Rendezvous weight of a backend for a key: splitmix64's finaliser over the two combined."""
    z = (key ^ ident) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


class InferenceBalancer(Balancer):
    """Model-server aware (SPEC §16.5): the lowest score ``waiting + in_flight_since_scrape + 0.5 × running /
    max(Σ running, 1) + 2 × kv_usage`` from each backend's scraped metrics (in-flight alone for a backend whose
    metrics are stale or missing, as ``least-connections``); a backend reporting more than ``max_queue`` waiting
    requests is left out while another is not. With a prompt-prefix key, the backend rendezvous hashing gives for
    it is taken when its score is within 1.0 of the best. Ties go round-robin, as ``least-connections``."""

    def __init__(self, backends: list[Backend], stale_after: float = 2.0, max_queue: int = 128) -> None:
        super().__init__(backends)
        self.stale_after = stale_after
        self.max_queue = max_queue
        self.last = -1  # position of the previous pick in ``backends``
        self.scores: list[float] = []  # scratch, reused

    def pick(self) -> Backend | None:
        return self.pick_keyed(-1)

    def pick_keyed(self, key: int) -> Backend | None:
        backends = self.backends
        n = len(backends)
        scores = self.scores
        if len(scores) != n:
            scores = [0.0] * n
            self.scores = scores
        fresh_after = time.monotonic() - self.stale_after
        max_queue = float(self.max_queue)
        total_running = 0.0
        any_open = False  # an eligible backend not over max_queue
        for idx in range(n):
            backend = backends[idx]
            if not backend.eligible:
                continue
            if backend.scraped_at >= fresh_after:
                total_running += backend.running
                if backend.waiting <= max_queue:
                    any_open = True
            else:
                any_open = True
        if total_running < 1.0:
            total_running = 1.0
        last = self.last
        best = -1
        after = -1  # first backend with the best score positioned after ``last``
        best_score = 0.0
        affine = -1
        affine_weight = -1
        for idx in range(n):
            backend = backends[idx]
            if not backend.eligible:
                continue
            load = backend.load()
            if backend.scraped_at >= fresh_after:
                if any_open and backend.waiting > max_queue:
                    continue
                sent = backend.sent_since_scrape
                recent = sent if sent < load else load
                score = (backend.waiting + float(recent) + 0.5 * backend.running / total_running
                         + 2.0 * backend.kv_usage)
            else:
                score = float(load)
            scores[idx] = score
            if best < 0 or score < best_score:
                best = idx
                best_score = score
                after = idx if idx > last else -1
            elif score == best_score and after < 0 and idx > last:
                after = idx
            if key >= 0:
                weight = _mix(key, backend.ident)
                if weight > affine_weight:
                    affine_weight = weight
                    affine = idx
        if best < 0:
            return None
        chosen = after if after >= 0 else best
        if affine >= 0 and scores[affine] <= best_score + 1.0:
            chosen = affine
            backends[chosen].prefix_hits += 1
        else:
            self.last = chosen
        backend = backends[chosen]
        backend.sent_since_scrape += 1
        return backend


def make_balancer(
    strategy: str, backends: list[Backend], rng: random.Random | None = None, stale_after: float = 2.0,
    max_queue: int = 128,
) -> Balancer:
    """The balancer for a canonical ``strategy`` name (SPEC §7.2); ``rng`` defaults to a fresh ``random.Random``.
    ``stale_after`` and ``max_queue``: the ``inference`` block's (SPEC §16.5)."""
    if strategy == "round-robin":
        return RoundRobinBalancer(backends)
    if strategy == "weighted":
        return WeightedBalancer(backends)
    if strategy == "least-connections":
        return LeastConnectionsBalancer(backends)
    if strategy == "random":
        return RandomBalancer(backends, rng if rng is not None else random.Random())
    if strategy == "p2c":
        return P2CBalancer(backends, rng if rng is not None else random.Random())
    if strategy == "inference":
        return InferenceBalancer(backends, stale_after, max_queue)
    raise ValueError(f"unknown load-balancing strategy {strategy!r} (expected one of: {', '.join(STRATEGIES)})")
