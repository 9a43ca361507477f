"""Backends and load-balancing strategies (SPEC §3.3 servers, §7.2): exact pick sequences."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from a3s_gateway.service.balancer import Backend, Balancer, make_balancer

STRATEGIES = ["round-robin", "weighted", "least-connections", "random", "p2c"]


def pool(*names: str, weights: list[int] | None = None) -> list[Backend]:
    weights = weights or [1] * len(names)
    return [Backend(f"http://{n}:8000", w) for n, w in zip(names, weights, strict=True)]


def picks(balancer: Balancer, count: int) -> list[str]:
    out = []
    for _ in range(count):
        backend = balancer.pick()
        out.append("-" if backend is None else backend.host)
    return out


# --- Backend -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "scheme", "host", "port", "base_path", "host_header"),
    [
        ("http://10.0.0.1:8000", "http", "10.0.0.1", 8000, "", "10.0.0.1:8000"),
        ("http://api.internal", "http", "api.internal", 80, "", "api.internal"),
        ("http://api.internal:80/", "http", "api.internal", 80, "", "api.internal"),
        ("https://api.internal", "https", "api.internal", 443, "", "api.internal"),
        ("https://api.internal:8443/v1/", "https", "api.internal", 8443, "/v1", "api.internal:8443"),
        ("h2c://grpc.internal", "h2c", "grpc.internal", 80, "", "grpc.internal"),
        ("h2c://grpc.internal:50051", "h2c", "grpc.internal", 50051, "", "grpc.internal:50051"),
        ("http://h:8000/base", "http", "h", 8000, "/base", "h:8000"),
        ("http://h:8000/base/", "http", "h", 8000, "/base", "h:8000"),
        ("http://h/a/b", "http", "h", 80, "/a/b", "h"),
        ("http://[::1]:8080", "http", "::1", 8080, "", "[::1]:8080"),
        ("http://[::1]", "http", "::1", 80, "", "[::1]"),
        ("https://[2001:db8::1]:443/x", "https", "2001:db8::1", 443, "/x", "[2001:db8::1]"),
        ("HTTP://API.Internal:8000", "http", "api.internal", 8000, "", "api.internal:8000"),
        ("tcp://db.internal:5432", "tcp", "db.internal", 5432, "", "db.internal:5432"),
        ("udp://10.0.0.53:53", "udp", "10.0.0.53", 53, "", "10.0.0.53:53"),
    ],
)
def test_backend_parsing(url: str, scheme: str, host: str, port: int, base_path: str, host_header: str) -> None:
    backend = Backend(url, 3)
    assert (backend.url, backend.scheme, backend.host, backend.port) == (url, scheme, host, port)
    assert (backend.base_path, backend.host_header, backend.weight) == (base_path, host_header, 3)
    assert backend.eligible is True
    assert backend.in_flight == 0


def test_backend_defaults_and_mutable_state() -> None:
    backend = Backend("http://h:1")
    assert backend.weight == 1
    backend.eligible = False
    backend.in_flight += 2
    assert (backend.eligible, backend.in_flight) == (False, 2)


@pytest.mark.parametrize(
    ("url", "weight", "message"),
    [
        ("ftp://h:21", 1, "unsupported scheme"),
        ("h:8000", 1, "unsupported scheme"),
        ("//h:8000", 1, "unsupported scheme"),
        ("http://", 1, "no host"),
        ("http://:8000", 1, "no host"),
        ("http://h:notaport", 1, "invalid port"),
        ("http://h:70000", 1, "invalid port"),
        ("http://h:0", 1, "invalid port"),
        ("http://[::1", 1, "IPv6"),
        ("tcp://db.internal", 1, "needs a port"),
        ("udp://dns", 1, "needs a port"),
        ("tcp://db:5432/x", 1, "has no path"),
        ("http://h/x?y=1", 1, "query or fragment"),
        ("http://h/x#f", 1, "query or fragment"),
        ("http://user:pw@h", 1, "credentials"),
        ("http://h", -1, "weight"),
    ],
)
def test_backend_rejects(url: str, weight: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Backend(url, weight)


# --- round-robin -------------------------------------------------------------------------------------------------


def test_round_robin_sequence_ignores_weights() -> None:
    balancer = make_balancer("round-robin", pool("a", "b", "c", weights=[5, 1, 0]))
    assert picks(balancer, 7) == ["a", "b", "c", "a", "b", "c", "a"]


def test_round_robin_over_eligible_only() -> None:
    backends = pool("a", "b", "c")
    balancer = make_balancer("round-robin", backends)
    assert picks(balancer, 2) == ["a", "b"]  # i = 2 now
    backends[1].eligible = False
    # eligible = [a, c]: i=2 -> a, i=3 -> c, i=4 -> a
    assert picks(balancer, 3) == ["a", "c", "a"]
    backends[1].eligible = True
    assert picks(balancer, 3) == ["c", "a", "b"]  # i=5,6,7 over [a, b, c]


# --- weighted ----------------------------------------------------------------------------------------------------


def test_smooth_weighted_5_1_1() -> None:
    balancer = make_balancer("weighted", pool("a", "b", "c", weights=[5, 1, 1]))
    assert picks(balancer, 14) == list("aabacaa" * 2)


@pytest.mark.parametrize(
    ("weights", "expected"),
    [
        ([1, 1, 1], "abcabc"),
        ([2, 1], "abaaba"),
        ([1, 2], "babbab"),
        ([3, 0, 1], "aaca" * 2),
        ([0, 1], "bbbb"),
        ([4, 2, 1], "abacaba"),
    ],
)
def test_smooth_weighted_sequences(weights: list[int], expected: str) -> None:
    names = "abc"[: len(weights)]
    balancer = make_balancer("weighted", pool(*names, weights=weights))
    assert "".join(picks(balancer, len(expected))) == expected


def test_weighted_distribution_is_exact_per_cycle() -> None:
    weights = [7, 3, 11, 1]
    balancer = make_balancer("weighted", pool("a", "b", "c", "d", weights=weights))
    counts = Counter(picks(balancer, sum(weights) * 5))
    assert counts == {"a": 35, "b": 15, "c": 55, "d": 5}


def test_weight_zero_is_never_picked() -> None:
    backends = pool("a", "b", weights=[0, 1])
    balancer = make_balancer("weighted", backends)
    assert set(picks(balancer, 20)) == {"b"}
    backends[1].eligible = False
    assert picks(balancer, 3) == ["-", "-", "-"]  # only a weight-0 backend is eligible
    assert make_balancer("weighted", pool("a", weights=[0])).pick() is None


def test_weighted_skips_ineligible_and_keeps_order() -> None:
    backends = pool("a", "b", "c", weights=[5, 1, 1])
    balancer = make_balancer("weighted", backends)
    backends[0].eligible = False
    assert picks(balancer, 4) == ["b", "c", "b", "c"]


# --- least-connections ------------------------------------------------------------------------------------------


def test_least_connections_picks_fewest_in_flight() -> None:
    backends = pool("a", "b", "c")
    backends[0].in_flight = 3
    backends[1].in_flight = 1
    backends[2].in_flight = 2
    balancer = make_balancer("least-connections", backends)
    assert picks(balancer, 3) == ["b", "b", "b"]
    backends[1].in_flight = 5
    assert picks(balancer, 2) == ["c", "c"]


def test_least_connections_ties_rotate() -> None:
    backends = pool("a", "b", "c")
    balancer = make_balancer("least-connections", backends)
    assert picks(balancer, 4) == ["a", "b", "c", "a"]  # all tied: plain round-robin
    backends[1].in_flight = 1
    # tied = [a, c]; the last pick was a: next tied after it is c, then wrap to a
    assert picks(balancer, 3) == ["c", "a", "c"]
    backends[1].in_flight = 0
    backends[0].in_flight = 1
    assert picks(balancer, 3) == ["b", "c", "b"]  # tied = [b, c]; last pick c -> wrap to b


def test_least_connections_tracks_in_flight_as_the_proxy_does() -> None:
    backends = pool("a", "b", "c")
    balancer = make_balancer("least-connections", backends)
    chosen = []
    for _ in range(6):  # requests that never finish: each pick adds one in-flight
        backend = balancer.pick()
        assert backend is not None
        backend.in_flight += 1
        chosen.append(backend.host)
    assert chosen == ["a", "b", "c", "a", "b", "c"]
    assert [b.in_flight for b in backends] == [2, 2, 2]


def test_least_connections_ignores_ineligible() -> None:
    backends = pool("a", "b")
    backends[1].in_flight = 9
    backends[0].eligible = False
    assert picks(make_balancer("least-connections", backends), 2) == ["b", "b"]


# --- random, p2c -------------------------------------------------------------------------------------------------


def test_random_is_seeded_and_uniform() -> None:
    first = picks(make_balancer("random", pool("a", "b", "c"), random.Random(7)), 3000)
    second = picks(make_balancer("random", pool("a", "b", "c"), random.Random(7)), 3000)
    assert first == second
    expected = ["abc"[random.Random(7).randrange(3)]]
    assert first[:1] == expected
    counts = Counter(first)
    assert set(counts) == {"a", "b", "c"} and min(counts.values()) > 900


def test_random_over_eligible_only() -> None:
    backends = pool("a", "b", "c")
    backends[1].eligible = False
    assert set(picks(make_balancer("random", backends, random.Random(1)), 200)) == {"a", "c"}


def test_p2c_seeded_sequence() -> None:
    backends = pool("a", "b", "c", "d")
    for backend, load in zip(backends, [4, 1, 3, 2], strict=True):
        backend.in_flight = load
    rng = random.Random(42)
    got = picks(make_balancer("p2c", backends, rng), 12)
    # replay: two distinct draws, fewer in-flight wins, tie -> first drawn
    replay = random.Random(42)
    expected = []
    for _ in range(12):
        i = replay.randrange(4)
        j = replay.randrange(3)
        j = j + 1 if j >= i else j
        expected.append("abcd"[j] if backends[j].in_flight < backends[i].in_flight else "abcd"[i])
    assert got == expected
    assert "a" not in got  # the most loaded backend never wins a pair


def test_p2c_draws_two_distinct_backends() -> None:
    backends = pool("a", "b")
    backends[0].in_flight = 1
    # two eligible and distinct draws: the idle one always wins
    assert set(picks(make_balancer("p2c", backends, random.Random(3)), 50)) == {"b"}


def test_p2c_tie_goes_to_first_drawn() -> None:
    backends = pool("a", "b", "c")
    got = picks(make_balancer("p2c", backends, random.Random(5)), 30)
    replay = random.Random(5)
    expected = []
    for _ in range(30):
        expected.append("abc"[replay.randrange(3)])
        replay.randrange(2)
    assert got == expected


def test_p2c_single_eligible() -> None:
    backends = pool("a", "b", "c")
    backends[0].eligible = False
    backends[2].eligible = False
    backends[1].in_flight = 100
    rng = random.Random(0)
    state = rng.getstate()
    assert picks(make_balancer("p2c", backends, rng), 3) == ["b", "b", "b"]
    assert rng.getstate() == state  # no draw needed


# --- all strategies ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_no_eligible_backend_gives_none(strategy: str) -> None:
    assert make_balancer(strategy, []).pick() is None
    backends = pool("a", "b")
    for backend in backends:
        backend.eligible = False
    balancer = make_balancer(strategy, backends, random.Random(0))
    assert balancer.pick() is None
    backends[1].eligible = True
    assert balancer.pick() is backends[1]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_only_eligible_backends_are_picked(strategy: str) -> None:
    backends = pool("a", "b", "c", "d", weights=[1, 2, 3, 4])
    backends[0].eligible = False
    backends[2].eligible = False
    balancer = make_balancer(strategy, backends, random.Random(9))
    assert balancer.backends is backends
    assert set(picks(balancer, 40)) == {"b", "d"}


@pytest.mark.parametrize("strategy", ["random", "p2c"])
def test_default_rng(strategy: str) -> None:
    assert make_balancer(strategy, pool("a")).pick() is not None


def test_unknown_strategy() -> None:
    with pytest.raises(ValueError, match="unknown load-balancing strategy 'fastest'"):
        make_balancer("fastest", pool("a"))
