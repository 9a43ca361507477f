"""Hot reload end to end (SPEC §13.6): in-process through ``Gateway.reload`` and the file watcher, and through the CLI.

Real loopback sockets only; every process started here is stopped by PID in a ``finally`` block.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from a3s_gateway import Gateway, GatewayConfig, GatewayState, StartupError
from support import Client, Handler, Request, gateway_port, ok, read_head, start_backend

ROOT = Path(__file__).resolve().parents[2]
GET = b"GET %s HTTP/1.1\r\nHost: a\r\n\r\n"


# --- helpers -----------------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def eventually(pred: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Poll ``pred`` until it holds or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


def wait_for(pred: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if pred():
                return True
        except OSError:
            pass
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)


async def get(port: int, path: str) -> tuple[int, bytes]:
    """One request on a fresh connection."""
    c = await Client.connect(port)
    try:
        resp = await c.request(GET % path.encode())
        return resp.status, resp.body
    finally:
        c.close()


def sse_backend_handler(finish: asyncio.Event, interval: float = 0.02) -> Handler:
    """``/sse…`` streams ``data: <n>`` events until ``finish`` is set, then ``data: [DONE]``; others echo the path."""

    async def handler(req: Request, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
        if not req.target.startswith("/sse"):
            w.write(ok(req.target.encode()))
            return True
        w.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
        for n in range(2000):  # bounded: 40 s at the default pace, far beyond any test here
            if finish.is_set():
                break
            ev = b"data: %d\n\n" % n
            w.write(b"%x\r\n%s\r\n" % (len(ev), ev))
            await w.drain()
            try:
                await asyncio.wait_for(finish.wait(), interval)
            except asyncio.TimeoutError:  # the builtin TimeoutError from Python 3.11 on
                pass
        done = b"data: [DONE]\n\n"
        w.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(done), done))
        await w.drain()
        return True

    return handler


class SseReader:
    """Reads one SSE response event by event in the background (chunked framing, one event per chunk)."""

    def __init__(self, port: int, path: str = "/sse") -> None:
        self.port = port
        self.path = path
        self.events: list[bytes] = []
        self.head = b""
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> SseReader:
        self.client = await Client.connect(self.port)
        self.client.send(GET % self.path.encode())
        self.task = asyncio.ensure_future(self._read())
        assert await eventually(lambda: len(self.events) >= 1), "the stream never started"
        return self

    async def _read(self) -> None:
        reader = self.client.reader
        self.head = await read_head(reader) or b""
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                return
            self.events.append((await reader.readexactly(size + 2))[:-2])

    async def finished(self, timeout: float = 5.0) -> None:
        assert self.task is not None
        await asyncio.wait_for(self.task, timeout)

    def assert_complete(self) -> None:
        """Every event in order, ending with [DONE]: nothing lost, nothing cut."""
        assert b"200 OK" in self.head
        assert self.events[-1] == b"data: [DONE]\n\n"
        assert self.events[:-1] == [b"data: %d\n\n" % n for n in range(len(self.events) - 1)]


def generation_hcl(i: int, backend: str, *, sse: bool = True, entrypoints: str = "") -> str:
    """Generation ``i``: router ``gen<i>`` added (``gen<i-1>`` removed), ``stable`` changed every time, and the
    ``sse`` router and its service present only when ``sse``."""
    stable = "PathPrefix(`/stable`)" if i % 2 == 0 else "PathPrefix(`/stable`) && Method(`GET`, `HEAD`)"
    text = entrypoints or 'entrypoints "web" { address = "127.0.0.1:0" }\n'
    text += f'routers "stable" {{ rule = "{stable}"; service = "s" }}\n'
    text += f'routers "gen{i}" {{ rule = "Path(`/gen{i}`)"; service = "s"; priority = {100 + i} }}\n'
    text += f'services "s" {{ load_balancer {{ servers = [{{ url = "{backend}" }}] }} }}\n'
    if sse:
        text += 'routers "sse" { rule = "PathPrefix(`/sse`)"; service = "events" }\n'
        text += f'services "events" {{ load_balancer {{ servers = [{{ url = "{backend}" }}] }} }}\n'
    return text


@pytest.fixture
async def gateways() -> AsyncIterator[list[Gateway]]:
    """Gateways a test started itself (e.g. from a file); shut down after the test."""
    started: list[Gateway] = []
    yield started
    for gw in started:
        await gw.shutdown(0.5)


async def start_from_file(path: Path, started: list[Gateway]) -> Gateway:
    gw = Gateway(GatewayConfig.from_file(str(path)), admin="off")
    started.append(gw)
    await gw.start()
    return gw


# --- (a) streams and keep-alive connections across reloads ---------------------------------------------------------


async def test_streams_and_keep_alive_survive_ten_reloads(start_gateway) -> None:
    finish = asyncio.Event()
    backend = await start_backend(sse_backend_handler(finish))
    gw = await start_gateway(generation_hcl(0, backend.url))
    port = gateway_port(gw)
    stream = await SseReader(port).start()
    keep = await Client.connect(port)
    assert (await keep.request(GET % b"/gen0")).body == b"/gen0"

    stop = asyncio.Event()
    results: list[tuple[int, bytes] | BaseException] = []

    async def concurrent_client() -> None:
        for _ in range(2000):  # bounded; stops as soon as the reloads are done
            if stop.is_set():
                return
            try:
                results.append(await get(port, "/stable/x"))
            except (OSError, TimeoutError, asyncio.TimeoutError, asyncio.IncompleteReadError) as e:
                results.append(e)

    load = asyncio.ensure_future(concurrent_client())
    for i in range(1, 11):
        seen = len(stream.events)
        # reload 5 removes the stream's router and service; the stream must go on regardless (§13.6 #4)
        await gw.reload(GatewayConfig.from_hcl(generation_hcl(i, backend.url, sse=i < 5), filename=f"gen{i}.hcl"))
        assert gw.state == GatewayState.RUNNING and gw.generation == i + 1
        # the keep-alive connection routes its next request on the new generation
        assert (await keep.request(GET % b"/gen%d" % i)).body == b"/gen%d" % i
        assert (await keep.request(GET % b"/gen%d" % (i - 1))).status == 404
        assert await eventually(lambda seen=seen: len(stream.events) > seen), f"stream stalled after reload {i}"
    stop.set()
    await asyncio.wait_for(load, 10)
    finish.set()
    await stream.finished()
    stream.assert_complete()
    assert len(stream.events) > 10

    failures = [r for r in results if not (isinstance(r, tuple) and r == (200, b"/stable/x"))]
    assert len(results) >= 10 and not failures, f"{len(failures)} of {len(results)} requests failed: {failures[:3]}"
    assert gw.reload_successes == 10 and gw.reload_failures == 0
    assert gw.health()["last_reload"]["success"] is True
    # the removed route answers 404 for new requests, the keep-alive connection is still the same one
    assert (await keep.request(GET % b"/sse")).status == 404
    keep.close()


async def test_failed_reloads_keep_the_running_generation(start_gateway, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    backend = await start_backend()
    gw = await start_gateway(generation_hcl(0, backend.url, sse=False))
    port = gateway_port(gw)
    keep = await Client.connect(port)
    assert (await keep.request(GET % b"/gen0")).status == 200

    # an added entrypoint that cannot bind: the other new listener, already bound, is closed again
    spare = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        eps = (f'entrypoints "web" {{ address = "127.0.0.1:0" }}\n'
               f'entrypoints "spare" {{ address = "127.0.0.1:{spare}" }}\n'
               f'entrypoints "busy" {{ address = "127.0.0.1:{busy}" }}\n')
        with pytest.raises(StartupError, match="busy"):
            await gw.reload(GatewayConfig.from_hcl(generation_hcl(1, backend.url, sse=False, entrypoints=eps)))
    with pytest.raises(OSError):
        await get(spare, "/gen0")
    # a feature this build does not run yet (every feature runs now: the Kubernetes provider is taken out of the
    # supported set for this check)
    from a3s_gateway.config import compile as compile_config

    monkeypatch.setattr(compile_config, "SUPPORTED_FEATURES",
                        compile_config.SUPPORTED_FEATURES - {"providers.kubernetes"})
    (tmp_path / "kubeconfig").write_text("")
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "kubeconfig"))
    kubernetes = ('entrypoints "web" { address = "127.0.0.1:0" }\n'
                  'providers { kubernetes { namespace = "default" } }\n')
    with pytest.raises(StartupError, match=r"not supported yet: providers\.kubernetes"):
        await gw.reload(GatewayConfig.from_hcl(generation_hcl(2, backend.url, sse=False, entrypoints=kubernetes)))

    assert gw.state == GatewayState.RUNNING and gw.generation == 1
    assert gw.reload_failures == 2 and gw.reload_successes == 0
    last = gw.health()["last_reload"]
    assert last["success"] is False and "not supported yet" in last["error"] and last["timestamp"].endswith("Z")
    assert set(gw.bound_addresses()) == {"web"}
    assert (await keep.request(GET % b"/gen0")).status == 200
    assert (await keep.request(GET % b"/gen2")).status == 404
    keep.close()


# --- (c) entrypoints added and removed by a reload ----------------------------------------------------------------


async def test_reload_adds_and_removes_entrypoints_without_cutting_streams(start_gateway) -> None:
    finish = asyncio.Event()
    backend = await start_backend(sse_backend_handler(finish))
    web = 'entrypoints "web" { address = "127.0.0.1:0" }\n'
    side_port = free_port()
    side = f'entrypoints "side" {{ address = "127.0.0.1:{side_port}" }}\n'
    gw = await start_gateway(generation_hcl(0, backend.url, entrypoints=web + side))
    web_port = gateway_port(gw)
    stream = await SseReader(side_port).start()
    idle = await Client.connect(side_port)
    assert (await idle.request(GET % b"/gen0")).status == 200

    extra_port = free_port()
    extra = f'entrypoints "extra" {{ address = "127.0.0.1:{extra_port}" }}\n'
    await gw.reload(GatewayConfig.from_hcl(generation_hcl(1, backend.url, entrypoints=web + extra)))

    assert set(gw.bound_addresses()) == {"web", "extra"} and gateway_port(gw) == web_port
    assert await get(extra_port, "/gen1") == (200, b"/gen1")
    assert await get(web_port, "/gen1") == (200, b"/gen1")
    with pytest.raises(ConnectionRefusedError):
        await get(side_port, "/gen1")  # the removed entrypoint stopped accepting
    assert await idle.closed(2)  # its idle keep-alive connection closed at once
    seen = len(stream.events)
    assert await eventually(lambda: len(stream.events) > seen + 2), "the stream on the removed entrypoint stalled"
    finish.set()
    await stream.finished()
    stream.assert_complete()
    assert await stream.client.closed(2)  # after its response the draining connection closes
    assert await eventually(lambda: gw.health()["active_connections"] == 0)

    # moving an entrypoint to another address: the new socket opens, the old one closes
    moved_port = free_port()
    moved = f'entrypoints "extra" {{ address = "127.0.0.1:{moved_port}" }}\n'
    await gw.reload(GatewayConfig.from_hcl(generation_hcl(2, backend.url, entrypoints=web + moved)))
    assert gw.bound_addresses()["extra"][1] == moved_port
    assert await get(moved_port, "/gen2") == (200, b"/gen2")
    with pytest.raises(ConnectionRefusedError):
        await get(extra_port, "/gen2")


# --- (d) watch = true ---------------------------------------------------------------------------------------------


def watched_hcl(backend: str, route: str, *, directory: str = "") -> str:
    return (f'providers {{ file {{ watch = true{f"; directory = {json.dumps(directory)}" if directory else ""} }} }}\n'
            'entrypoints "web" { address = "127.0.0.1:0" }\n'
            f'routers "r" {{ rule = "Path(`{route}`)"; service = "s" }}\n'
            f'services "s" {{ load_balancer {{ servers = [{{ url = "{backend}" }}] }} }}\n')


async def test_watch_picks_up_an_edit_and_debounces_quick_saves(tmp_path: Path, gateways: list[Gateway]) -> None:
    backend = await start_backend()
    cfg = tmp_path / "gateway.hcl"
    cfg.write_text(watched_hcl(backend.url, "/one"))
    gw = await start_from_file(cfg, gateways)
    port = gateway_port(gw)
    assert (await get(port, "/one"))[0] == 200

    cfg.write_text(watched_hcl(backend.url, "/two"))  # no SIGHUP, no API call
    assert await eventually(lambda: gw.generation == 2), "the edit was not picked up"
    assert (await get(port, "/two"))[0] == 200 and (await get(port, "/one"))[0] == 404

    # two saves well within the 200 ms debounce: one reload, and the last content wins
    cfg.write_text(watched_hcl(backend.url, "/three"))
    await asyncio.sleep(0.03)
    cfg.write_text(watched_hcl(backend.url, "/four"))
    assert await eventually(lambda: gw.generation == 3), "the quick saves were not picked up"
    await asyncio.sleep(0.5)  # a second reload, if any, would have happened by now
    assert gw.generation == 3 and gw.reload_successes == 2
    assert (await get(port, "/four"))[0] == 200 and (await get(port, "/three"))[0] == 404

    # an atomic replace (write a temporary file, rename it over the main file) is a save too
    tmp = tmp_path / ".gateway.hcl.tmp"
    tmp.write_text(watched_hcl(backend.url, "/five"))
    os.replace(tmp, cfg)
    assert await eventually(lambda: gw.generation == 4), "the atomic replace was not picked up"
    assert (await get(port, "/five"))[0] == 200

    # a broken save changes nothing; the next good one is picked up
    cfg.write_text(watched_hcl(backend.url, "/six").replace("Path(", "Paht("))
    assert await eventually(lambda: gw.reload_failures == 1)
    assert gw.generation == 4 and (await get(port, "/five"))[0] == 200
    assert gw.health()["last_reload"]["success"] is False
    cfg.write_text(watched_hcl(backend.url, "/seven"))
    assert await eventually(lambda: gw.generation == 5)
    assert (await get(port, "/seven"))[0] == 200


async def test_reload_can_switch_watching_off(tmp_path: Path, gateways: list[Gateway]) -> None:
    backend = await start_backend()
    cfg = tmp_path / "gateway.hcl"
    cfg.write_text(watched_hcl(backend.url, "/one"))
    gw = await start_from_file(cfg, gateways)
    cfg.write_text(watched_hcl(backend.url, "/two").replace("watch = true", "watch = false"))
    assert await eventually(lambda: gw.generation == 2)
    cfg.write_text(watched_hcl(backend.url, "/three").replace("watch = true", "watch = false"))
    await asyncio.sleep(0.5)
    assert gw.generation == 2 and (await get(gateway_port(gw), "/two"))[0] == 200


class _OnLog(logging.Handler):
    """Runs ``action`` once, inside the logging call, when the gateway logs a message starting with ``prefix``."""

    def __init__(self, prefix: str, action: Callable[[], object]) -> None:
        super().__init__(logging.INFO)
        self.prefix = prefix
        self.action: Callable[[], object] | None = action

    def emit(self, record: logging.LogRecord) -> None:
        if self.action is not None and record.getMessage().startswith(self.prefix):
            action, self.action = self.action, None
            action()


@contextlib.contextmanager
def on_log(prefix: str, action: Callable[[], object]) -> Iterator[_OnLog]:
    """Save a file at a moment the gateway announces in its log (e.g. its ready signal), deterministically: the
    save happens before the logging call returns, so before anything the gateway does after it."""
    logger = logging.getLogger("a3s_gateway")
    handler = _OnLog(prefix, action)
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


async def test_a_save_at_the_ready_signal_is_applied(tmp_path: Path, gateways: list[Gateway]) -> None:
    """Issue 16 item 3: the entrypoints listen before the watches exist; a save in between raises no event and was
    lost until the next save. Once armed, the watcher compares the files with what was read (SPEC §13.6)."""
    backend = await start_backend()
    cfg = tmp_path / "gateway.hcl"
    cfg.write_text(watched_hcl(backend.url, "/one"))
    with on_log("entrypoint web listening", lambda: cfg.write_text(watched_hcl(backend.url, "/two"))) as hook:
        gw = await start_from_file(cfg, gateways)
    assert hook.action is None  # the save was made, at the ready signal
    assert await eventually(lambda: gw.generation == 2), "the save made at the ready signal was lost"
    port = gateway_port(gw)
    assert (await get(port, "/two"))[0] == 200 and (await get(port, "/one"))[0] == 404
    await asyncio.sleep(0.5)
    assert gw.generation == 2 and gw.reload_successes == 1  # one reload for one save


async def test_an_unchanged_file_is_not_reloaded_when_the_watcher_arms(tmp_path: Path, gateways: list[Gateway]) -> None:
    backend = await start_backend()
    conf_d = tmp_path / "conf.d"
    conf_d.mkdir()
    (conf_d / "a.hcl").write_text('routers "a" { rule = "Path(`/a`)"; service = "s" }\n')
    cfg = tmp_path / "gateway.hcl"
    cfg.write_text(watched_hcl(backend.url, "/main", directory="conf.d"))
    gw = await start_from_file(cfg, gateways)
    await asyncio.sleep(0.6)
    assert gw.generation == 1 and gw.reload_successes == gw.reload_failures == 0


async def test_a_directory_file_saved_at_the_ready_signal_is_applied(tmp_path: Path, gateways: list[Gateway]) -> None:
    backend = await start_backend()
    conf_d = tmp_path / "conf.d"
    conf_d.mkdir()
    (conf_d / "a.hcl").write_text('routers "a" { rule = "Path(`/a`)"; service = "s" }\n')
    cfg = tmp_path / "gateway.hcl"
    cfg.write_text(watched_hcl(backend.url, "/main", directory="conf.d"))

    def save() -> None:
        (conf_d / "a.hcl").write_text('routers "a" { rule = "Path(`/a2`)"; service = "s" }\n')
        (conf_d / "b.hcl").write_text('routers "b" { rule = "Path(`/b`)"; service = "s" }\n')

    with on_log("entrypoint web listening", save):
        gw = await start_from_file(cfg, gateways)
    assert await eventually(lambda: gw.generation == 2), "the directory files saved at the ready signal were lost"
    port = gateway_port(gw)
    assert [(await get(port, p))[0] for p in ("/a", "/a2", "/b")] == [404, 200, 200]


async def test_a_save_in_a_new_directory_before_it_is_watched_is_applied(tmp_path: Path,
                                                                          gateways: list[Gateway]) -> None:
    """A reload that moves ``providers.file.directory``: a file saved there between the reload's read and the new
    watch being armed (here: when the watcher logs its new paths, before its watch task runs) is picked up."""
    backend = await start_backend()
    for name in ("one.d", "two.d"):
        (tmp_path / name).mkdir()
    (tmp_path / "two.d" / "b.hcl").write_text('routers "b" { rule = "Path(`/b`)"; service = "s" }\n')
    cfg = tmp_path / "gateway.hcl"
    cfg.write_text(watched_hcl(backend.url, "/main", directory="one.d"))
    gw = await start_from_file(cfg, gateways)
    save = lambda: (tmp_path / "two.d" / "c.hcl").write_text(  # noqa: E731
        'routers "c" { rule = "Path(`/c`)"; service = "s" }\n')
    with on_log("now watching", save) as hook:
        cfg.write_text(watched_hcl(backend.url, "/main", directory="two.d"))
        assert await eventually(lambda: gw.generation >= 2 and hook.action is None)
        assert await eventually(lambda: gw.generation == 3), "the file saved before the new watch was lost"
    port = gateway_port(gw)
    assert [(await get(port, p))[0] for p in ("/b", "/c")] == [200, 200]


# --- (e) directory files ------------------------------------------------------------------------------------------


async def test_directory_files_are_merged_and_watched(tmp_path: Path, gateways: list[Gateway]) -> None:
    backend = await start_backend()
    conf_d = tmp_path / "conf.d"
    conf_d.mkdir()
    (conf_d / "a.hcl").write_text('routers "a" { rule = "Path(`/a`)"; service = "s" }\n')
    (conf_d / "notes.txt").write_text("not configuration")
    cfg = tmp_path / "gateway.hcl"
    cfg.write_text(watched_hcl(backend.url, "/main", directory="conf.d"))
    gw = await start_from_file(cfg, gateways)
    port = gateway_port(gw)
    assert (await get(port, "/a"))[0] == 200 and (await get(port, "/main"))[0] == 200

    # a new file, written elsewhere and renamed in (how editors and config management tools save)
    tmp = tmp_path / "b.hcl.tmp"
    tmp.write_text('routers "b" { rule = "Path(`/b`)"; service = "s" }\n')
    os.replace(tmp, conf_d / "b.hcl")
    assert await eventually(lambda: gw.generation == 2), "the new directory file was not picked up"
    assert (await get(port, "/b"))[0] == 200 and "b" in gw.config.routers

    (conf_d / "a.hcl").unlink()
    assert await eventually(lambda: gw.generation == 3), "the deleted directory file was not picked up"
    assert (await get(port, "/a"))[0] == 404 and (await get(port, "/b"))[0] == 200

    (conf_d / "notes.txt").write_text("still not configuration")
    (conf_d / ".hidden.hcl").write_text("this is { not valid")
    await asyncio.sleep(0.5)
    assert gw.generation == 3 and gw.reload_failures == 0  # files that are not configuration are ignored


# --- through the CLI ------------------------------------------------------------------------------------------------


def stop(*procs: subprocess.Popen[bytes]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def status(port: int, path: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def start_cli(cfg: Path, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen([sys.executable, "-m", "a3s_gateway", "-c", str(cfg), "--admin", "off"], stderr=out)


def test_cli_watch_edit_broken_save_and_directory(tmp_path: Path) -> None:
    b_port, port = free_port(), free_port()
    backend = subprocess.Popen([sys.executable, str(ROOT / "examples" / "demo_backend.py"), "--port", str(b_port)])
    conf_d = tmp_path / "conf.d"
    conf_d.mkdir()
    cfg, log = tmp_path / "gateway.hcl", tmp_path / "gateway.log"

    def main(route: str) -> str:
        return ('providers { file { watch = true; directory = "conf.d" } }\n'
                f'entrypoints "web" {{ address = "127.0.0.1:{port}" }}\n'
                f'routers "r" {{ rule = "PathPrefix(`{route}`)"; service = "s" }}\n'
                f'services "s" {{ load_balancer {{ servers = [{{ url = "http://127.0.0.1:{b_port}" }}] }} }}\n')

    cfg.write_text(main("/v1"))
    gw = start_cli(cfg, log)
    try:
        assert wait_for(lambda: status(port, "/v1/models") == 200), log.read_text()
        cfg.write_text(main("/v2"))  # an edit, no SIGHUP
        assert wait_for(lambda: status(port, "/v2/models") == 200, 5), log.read_text()
        assert status(port, "/v1/models") == 404

        # a broken save (line 3): the old configuration keeps serving, the log names file:line
        cfg.write_text(main("/v3").replace('service = "s"', 'service = "nope"'))
        assert wait_for(lambda: "reload of" in log.read_text(), 5), log.read_text()
        text = log.read_text()
        assert f"{cfg}:3:" in text and "nope" in text, text
        assert status(port, "/v2/models") == 200 and gw.poll() is None

        # the next good save is picked up
        cfg.write_text(main("/v3"))
        assert wait_for(lambda: status(port, "/v3/models") == 200, 5), log.read_text()

        # a file created in the watched directory adds its routers
        (conf_d / "extra.hcl").write_text('routers "extra" { rule = "PathPrefix(`/extra`)"; service = "s" }\n')
        assert wait_for(lambda: status(port, "/extra/x") == 200, 5), log.read_text()
        assert status(port, "/v3/models") == 200
    finally:
        stop(gw, backend)
    assert gw.returncode == 0


def test_cli_sighup_reloads_under_traffic_keep_streams(tmp_path: Path) -> None:
    b_port, port = free_port(), free_port()
    backend = subprocess.Popen([sys.executable, str(ROOT / "examples" / "demo_backend.py"), "--port", str(b_port),
                                "--token-delay", "0.25"])
    cfg, log = tmp_path / "gateway.hcl", tmp_path / "gateway.log"

    def generation(i: int) -> str:
        return (f'entrypoints "web" {{ address = "127.0.0.1:{port}" }}\n'
                'routers "llm" { rule = "PathPrefix(`/v1`)"; service = "llm" }\n'
                f'routers "gen{i}" {{ rule = "Path(`/gen{i}`)"; service = "llm" }}\n'
                f'services "llm" {{ load_balancer {{ servers = [{{ url = "http://127.0.0.1:{b_port}" }}] }} }}\n')

    cfg.write_text(generation(0))
    gw = start_cli(cfg, log)
    failures: list[str] = []
    done = threading.Event()
    stream_body: list[bytes] = []

    def traffic() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)  # one keep-alive connection
        for _ in range(5000):
            if done.is_set():
                break
            try:
                conn.request("GET", "/v1/models")
                resp = conn.getresponse()
                body = resp.read()
                if resp.status != 200 or b"demo" not in body:
                    failures.append(f"{resp.status} {body[:80]!r}")
            except (OSError, http.client.HTTPException) as e:
                failures.append(repr(e))
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.close()

    def stream() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("POST", "/v1/chat/completions", body=b'{"stream": true}')
        stream_body.append(conn.getresponse().read())
        conn.close()

    threads = [threading.Thread(target=traffic), threading.Thread(target=stream)]
    try:
        assert wait_for(lambda: status(port, "/v1/models") == 200), log.read_text()
        for t in threads:
            t.start()
        for i in range(1, 11):
            cfg.write_text(generation(i))
            gw.send_signal(signal.SIGHUP)
            assert wait_for(lambda i=i: status(port, f"/gen{i}") == 200, 5), log.read_text()
            assert status(port, f"/gen{i - 1}") == 404
        assert threads[1].is_alive(), "the stream should still be running after the reloads"
    finally:
        done.set()
        for t in threads:
            if t.ident is not None:  # started
                t.join(15)
        stop(gw, backend)
    assert not failures, failures[:5]
    events = [line for line in stream_body[0].split(b"\n") if line.startswith(b"data: ")]
    assert events[-1] == b"data: [DONE]" and len(events) == 14  # 13 tokens, then [DONE]
    assert "generation 11" in log.read_text()
    assert gw.returncode == 0
