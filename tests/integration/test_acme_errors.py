"""ACME errors a user acts on (SPEC §10.4), end to end through the ACME client: a CA that rate-limits is asked again
only at the time it names (its ``Retry-After``), not at the hourly retry; a challenge the CA cannot validate is
logged with the domain, the challenge type and the CA's problem detail (pebble)."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import pytest
from fake_acme import RATE_LIMITED, FakeAcme
from pebble_ca import free_port, pebble_server
from test_acme_e2e import DOMAIN, acme_config, served, start

from a3s_gateway.acme import manager as acme_manager
from support import start_backend

pytestmark = pytest.mark.timeout(60)


async def test_a_rate_limited_order_is_retried_at_the_time_the_ca_names(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(acme_manager, "RETRY_EVERY", 0.2)  # an ordinary failure would be retried within 0.2 s
    caplog.set_level(logging.INFO, "a3s_gateway.acme")
    backend = await start_backend()
    ca = FakeAcme(retry_after=2, detail="too many new orders recently: see the rate limits")
    gw = await start(acme_config(free_port(), backend.url, tmp_path / "acme", ca.directory_url, "")
                     .replace('    acme_ca_file      = ""\n', ""))
    try:
        deadline = time.monotonic() + 10
        while len(ca.orders) < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert len(ca.orders) >= 2
        assert ca.orders[1] - ca.orders[0] >= 1.9  # the CA's 2 s, not RETRY_EVERY
        failure = next(r.getMessage() for r in caplog.records if "not obtained" in r.getMessage())
        assert f"certificate for {DOMAIN} not obtained (challenge http-01): {RATE_LIMITED}: too many new orders" \
            in failure
        assert "retrying at" in failure
    finally:
        await gw.shutdown(0.5)
        ca.close()


async def test_a_failed_challenge_logs_the_domain_the_challenge_and_the_cas_detail(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "a3s_gateway.acme")
    backend = await start_backend()
    closed = free_port()  # pebble validates HTTP-01 on this port, where nothing listens
    with pebble_server(http_port=closed) as ca:
        gw = await start(acme_config(free_port(), backend.url, tmp_path / "acme", ca.directory_url, ca.ca_file))
        try:
            deadline = time.monotonic() + 15
            while "not obtained" not in caplog.text and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            failure = next(r.getMessage() for r in caplog.records if "not obtained" in r.getMessage())
            assert f"certificate for {DOMAIN} not obtained (challenge http-01): " \
                   "urn:ietf:params:acme:error:connection: " in failure
            assert f"127.0.0.1:{closed}" in failure and "connection refused" in failure  # pebble's own words
            assert "serving the default certificate meanwhile; retrying at" in failure
            assert gw.acme is not None and gw.acme.orders == 1
            assert not gw.live.acme_tokens  # the answer is withdrawn after the failed order too
            assert (await served(gw.bound_addresses()["websecure"][1]))  # the fallback still serves
        finally:
            await gw.shutdown(0.5)
