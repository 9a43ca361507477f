"""``make dist``: a manylinux wheel that installs into a fresh virtual environment and proxies a request with the
compiled modules loaded; the sdist it was built from carries what a from-source build needs."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# The first test also builds the session's `make dist` (sdist, then every extension compiled again from it: about
# 2 minutes on 2 cores, more on a busy machine); the build itself is bounded by the 1200 s of `conftest._make`.
pytestmark = pytest.mark.timeout(1500)


def _one(dist: Path, pattern: str) -> Path:
    found = sorted(dist.glob(pattern))
    assert len(found) == 1, f"expected one {pattern} in {dist}: {[p.name for p in dist.iterdir()]}"
    return found[0]


def test_dist_holds_an_sdist_and_a_manylinux_wheel(dist_dir: Path) -> None:
    names = sorted(p.name for p in dist_dir.iterdir())
    assert not [n for n in names if "-linux_" in n], f"the unrepaired wheel was left behind: {names}"
    wheel = _one(dist_dir, "a3s_gateway-*manylinux*.whl")
    tag = f"cp{sys.version_info[0]}{sys.version_info[1]}"
    assert f"-{tag}-{tag}-" in wheel.name, wheel.name
    with zipfile.ZipFile(wheel) as z:
        files = z.namelist()
    compiled = [f for f in files if f.endswith(".so")]
    # the C head scanner + Cython modules, and the mypyc group library with one shim per compiled module
    assert any(f.startswith("a3s_gateway_hot__mypyc") for f in compiled), compiled
    for module in ("http/_parser_c", "http/_headers_c", "http/_framing_c", "_segment_c", "proxy/_nghttp2",
                   "proxy/http1", "routing/router"):
        assert any(f.startswith(f"a3s_gateway/{module}.") for f in compiled), (module, compiled)
    assert any(f.startswith("a3s_gateway.libs/libnghttp2") for f in files), "libnghttp2 not bundled (auditwheel)"
    assert any(f.startswith("a3s_gateway/config/_hcl_grammar-") for f in files), "grammar tables not shipped"
    assert not [f for f in files if f.startswith(("tests/", "bench/"))]

    sdist = _one(dist_dir, "a3s_gateway-*.tar.gz")
    with tarfile.open(sdist) as t:
        members = {m.name.split("/", 1)[1] for m in t.getmembers() if "/" in m.name}
    for needed in ("setup.py", "pyproject.toml", "csrc/http1.c", "csrc/http1.h", "csrc/segment.c", "csrc/segment.h",
                   "src/a3s_gateway/http/_parser_c.pyx", "src/a3s_gateway/_segment_c.pyx",
                   "src/a3s_gateway/proxy/_nghttp2.pyx", "src/a3s_gateway/proxy/_nghttp2.pxd",
                   "deploy/build-nghttp2.sh",
                   "tests/unit/test_compiled.py", "cibuildwheel.toml"):
        assert needed in members, f"{needed} missing from the sdist (MANIFEST.in)"
    assert not [m for m in members if m.endswith(".so")]


@pytest.fixture(scope="module")
def venv(dist_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment with only the wheel (and its dependencies) installed."""
    env_dir = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", str(env_dir)], check=True, timeout=120)
    wheel = _one(dist_dir, "a3s_gateway-*manylinux*.whl")
    out = subprocess.run([str(env_dir / "bin" / "python"), "-m", "pip", "install", "-q", str(wheel)],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    return env_dir


def test_installed_wheel_reports_every_hot_path_module_compiled(venv: Path, tmp_path: Path) -> None:
    out = subprocess.run([str(venv / "bin" / "a3s-gateway"), "version", "-v"], capture_output=True, text=True,
                         cwd=tmp_path, timeout=60)
    assert out.returncode == 0, out.stderr
    modules = [line for line in out.stdout.splitlines() if line.startswith("  ")]
    assert len(modules) >= 10, out.stdout
    assert all(line.rstrip().endswith(" compiled") for line in modules), out.stdout
    # loaded from the fresh environment, not from this checkout
    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import a3s_gateway; print(a3s_gateway.__file__)"],
                           capture_output=True, text=True, cwd=tmp_path, timeout=60).stdout
    assert where.startswith(str(venv)), where


def test_installed_extensions_do_not_point_into_the_build_machine(venv: Path) -> None:
    """auditwheel's repair leaves no RPATH/RUNPATH into the build tree or the build machine's Python."""
    readelf = subprocess.run(["which", "readelf"], capture_output=True, text=True).stdout.strip()
    if not readelf:
        pytest.skip("readelf (binutils) not installed")
    site = next((venv / "lib").glob("python3*/site-packages"))
    for so in site.glob("a3s_gateway*/**/*.so"):
        dyn = subprocess.run([readelf, "-d", str(so)], capture_output=True, text=True).stdout
        for line in dyn.splitlines():
            if "RPATH" in line or "RUNPATH" in line:
                assert "$ORIGIN" in line and str(ROOT) not in line, (so, line)


class _Backend:
    """A one-route HTTP/1.1 backend on a loopback port, in a thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.port = 0
        ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self.thread.start()
        assert ready.wait(10)

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                if not head:
                    break
                seen = next((line.split(b":", 1)[1].strip() for line in head.split(b"\r\n")
                             if line.lower().startswith(b"x-forwarded-for:")), b"-")
                body = b"from the backend, forwarded for " + seen
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
                await writer.drain()

        async def start() -> None:
            server = await asyncio.start_server(handle, "127.0.0.1", 0)
            self.port = server.sockets[0].getsockname()[1]
            ready.set()

        self.loop.run_until_complete(start())
        self.loop.run_forever()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture
def backend() -> Iterator[_Backend]:
    b = _Backend()
    yield b
    b.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_installed_wheel_proxies_a_request(venv: Path, backend: _Backend, tmp_path: Path) -> None:
    port = _free_port()
    (tmp_path / "gateway.hcl").write_text(
        f'entrypoints "web" {{\n  address = "127.0.0.1:{port}"\n}}\n'
        'routers "all" {\n  rule = "PathPrefix(`/`)"\n  service = "backend"\n  middlewares = ["limit"]\n}\n'
        f'services "backend" {{\n  load_balancer {{\n    servers = [{{ url = "http://127.0.0.1:{backend.port}" }}]\n'
        '  }\n}\n'
        'middlewares "limit" {\n  type = "rate-limit"\n  rate = 100\n  burst = 10\n}\n')
    # from its own directory, finding ./gateway.hcl as a user's would; a fresh cache directory (first run)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("A3S_", "PYTHON"))}
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    gw = subprocess.Popen([str(venv / "bin" / "a3s-gateway"), "--admin", "off"], cwd=tmp_path, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        body = b""
        headers: dict[str, str] = {}
        while time.monotonic() < deadline and gw.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/hello", timeout=5) as r:
                    body, headers = r.read(), dict(r.headers)
                break
            except (ConnectionError, urllib.error.URLError):
                time.sleep(0.02)
        assert body == b"from the backend, forwarded for 127.0.0.1", (body, gw.poll())
        assert headers.get("RateLimit-Limit") == "10"
    finally:
        gw.send_signal(signal.SIGTERM)
        _, err = gw.communicate(timeout=30)
    assert gw.returncode == 0, err
