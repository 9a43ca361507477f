"""Fixtures of the load comparison (bench/ is never part of the test run).

Options (each also settable through the environment variable in brackets, for `make bench`):
  --load-duration S [BENCH_DURATION=10]  --load-connections N [BENCH_CONNECTIONS=64]  --load-repeat N [BENCH_REPEAT=3]
  --load-warmup S [BENCH_WARMUP=1]  --load-scenarios LIST [BENCH_SCENARIOS]  --load-proxies LIST [BENCH_PROXIES]
  --load-proxy-cpu N [BENCH_PROXY_CPU]  --load-enforce [BENCH_ENFORCE=1]  --load-no-results [BENCH_NO_RESULTS=1]
  --idle-connections N [BENCH_IDLE_CONNECTIONS=8000]  --sse-duration S [BENCH_SSE_DURATION=5]
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from _peers import PROXIES, RESULTS_PATH, Lab, Log, PeerError, plan_cpus
from idle_rss import DEFAULT_CONNECTIONS
from load_compare import SCENARIOS, Recorder, Settings, run_context, start_lab

_SUMMARY: list[str] = []


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("a3s-bench", "a3s-gateway load comparison (bench/)")
    g.addoption("--load-duration", type=float, default=float(_env("BENCH_DURATION", "10")),
                help="seconds per measured wrk run")
    g.addoption("--load-connections", type=int, default=int(_env("BENCH_CONNECTIONS", "64")), help="wrk connections")
    g.addoption("--load-repeat", type=int, default=int(_env("BENCH_REPEAT", "3")), help="repetitions per proxy")
    g.addoption("--load-warmup", type=float, default=float(_env("BENCH_WARMUP", "1")),
                help="unmeasured wrk seconds before each run")
    g.addoption("--load-scenarios", default=_env("BENCH_SCENARIOS", ",".join(SCENARIOS)),
                help=f"comma list of {', '.join(SCENARIOS)}")
    g.addoption("--load-proxies", default=_env("BENCH_PROXIES", ",".join(PROXIES)),
                help="comma list of nginx, haproxy, gateway, direct")
    g.addoption("--load-proxy-cpu", type=int, default=int(_env("BENCH_PROXY_CPU", "-1")),
                help="core for the proxies (default: the last one)")
    g.addoption("--load-enforce", action="store_true", default=_env("BENCH_ENFORCE", "") == "1",
                help="fail when a target is missed or the gateway cannot run")
    g.addoption("--load-no-results", action="store_true", default=_env("BENCH_NO_RESULTS", "") == "1",
                help="do not append to .bench/results.jsonl")
    g.addoption("--idle-connections", type=int, default=int(_env("BENCH_IDLE_CONNECTIONS", str(DEFAULT_CONNECTIONS))),
                help="idle keep-alive connections for the RSS test")
    g.addoption("--sse-duration", type=float, default=float(_env("BENCH_SSE_DURATION", "5")),
                help="seconds per SSE latency stream")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _SUMMARY:
        terminalreporter.section("a3s-gateway load comparison")
        for text in _SUMMARY:
            terminalreporter.write_line(text)


@pytest.fixture(scope="session")
def bench_log(pytestconfig: pytest.Config) -> Log:
    """Print at once, even while pytest captures output (runs take minutes)."""
    capman = pytestconfig.pluginmanager.getplugin("capturemanager")
    reporter = pytestconfig.pluginmanager.getplugin("terminalreporter")

    def log(message: str) -> None:
        if capman is None or reporter is None:
            print(message, flush=True)
            return
        with capman.global_and_fixture_disabled():
            reporter.write_line(message)

    return log


@pytest.fixture(scope="session")
def bench_summary() -> list[str]:
    """Texts repeated in the terminal summary at the end of the session."""
    return _SUMMARY


@pytest.fixture(scope="session")
def load_settings(pytestconfig: pytest.Config) -> Settings:
    opt = pytestconfig.getoption
    scenarios = tuple(s for s in str(opt("--load-scenarios")).split(",") if s)
    proxies = tuple(p for p in str(opt("--load-proxies")).split(",") if p)
    bad = [s for s in scenarios if s not in SCENARIOS] + [p for p in proxies if p not in (*PROXIES, "direct")]
    if bad:
        raise pytest.UsageError(f"unknown scenario or proxy: {', '.join(bad)}")
    return Settings(duration=float(opt("--load-duration")), connections=int(opt("--load-connections")),
                    repeat=int(opt("--load-repeat")), warmup=float(opt("--load-warmup")), scenarios=scenarios,
                    proxies=proxies, results=None if opt("--load-no-results") else RESULTS_PATH)


@pytest.fixture(scope="session")
def bench_lab(pytestconfig: pytest.Config, load_settings: Settings, bench_log: Log) -> Iterator[Lab]:
    """Backends and proxies for the whole session; every process is stopped by PID at the end."""
    cpu = int(pytestconfig.getoption("--load-proxy-cpu"))
    lab = Lab(plan_cpus(None if cpu < 0 else cpu), bench_log)
    try:
        try:
            start_lab(load_settings, lab, bench_log)
        except PeerError as e:
            pytest.fail(f"benchmark peers could not start: {e}", pytrace=False)
        yield lab
    finally:
        lab.close()


@pytest.fixture(scope="session")
def bench_recorder(bench_lab: Lab, load_settings: Settings) -> Recorder:
    return Recorder(load_settings.results, run_context(bench_lab, load_settings, "load_compare"))
