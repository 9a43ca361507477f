"""providers/file.py: which paths count as configuration, and the trailing-edge debounce (SPEC §13.6)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from watchfiles import Change

from a3s_gateway import GatewayConfig
from a3s_gateway.providers.file import FileWatcher


async def _noop() -> None:
    return None


@pytest.mark.parametrize(
    ("path", "relevant"),
    [
        ("etc/gateway.hcl", True),  # the main file
        ("etc/other.hcl", False),  # a sibling of the main file, not in the directory
        ("etc/.gateway.hcl.swp", False),
        ("etc/..data", True),  # Kubernetes ConfigMap symlink swap next to the main file
        ("etc/conf.d/a.hcl", True),
        ("etc/conf.d/.a.hcl", False),  # hidden files are skipped (§2.5)
        ("etc/conf.d/a.hcl.tmp", False),
        ("etc/conf.d/a.hcl~", False),
        ("etc/conf.d/notes.txt", False),
        ("etc/conf.d/..2026_01_05", True),
        ("etc/conf.d/sub/b.hcl", False),  # not recursive
    ],
)
def test_relevant_paths(tmp_path: Path, path: str, relevant: bool) -> None:
    watcher = FileWatcher(str(tmp_path / "etc/gateway.hcl"), str(tmp_path / "etc/conf.d"), _noop)
    assert watcher.relevant(Change.modified, str(tmp_path / path)) is relevant
    assert watcher.watched_directories() == [str(tmp_path / "etc"), str(tmp_path / "etc/conf.d")]


def test_directory_next_to_the_main_file_is_watched_once(tmp_path: Path) -> None:
    watcher = FileWatcher(str(tmp_path / "gateway.hcl"), str(tmp_path), _noop)
    assert watcher.watched_directories() == [str(tmp_path)]
    assert watcher.relevant(Change.added, str(tmp_path / "routes.hcl"))


class Recorder:
    """A reload that records when it ran and can be held open."""

    def __init__(self) -> None:
        self.calls: list[float] = []
        self.release = asyncio.Event()
        self.release.set()

    async def __call__(self) -> None:
        self.calls.append(time.monotonic())
        await self.release.wait()


async def test_events_coalesce_on_the_trailing_edge(tmp_path: Path) -> None:
    rec = Recorder()
    watcher = FileWatcher(str(tmp_path / "g.hcl"), "", rec, debounce=0.1)
    watcher.start()
    try:
        first = time.monotonic()
        for _ in range(4):  # a burst of events 30 ms apart: one reload, 100 ms after the last
            watcher.notify()
            await asyncio.sleep(0.03)
        await asyncio.sleep(0.3)
        assert len(rec.calls) == 1
        assert rec.calls[0] - first >= 0.09 + 0.1  # three gaps, then the debounce after the last event
    finally:
        await watcher.close()


async def test_an_event_during_a_reload_schedules_exactly_one_more(tmp_path: Path) -> None:
    rec = Recorder()
    watcher = FileWatcher(str(tmp_path / "g.hcl"), "", rec, debounce=0.05)
    watcher.start()
    try:
        rec.release.clear()
        watcher.notify()
        await asyncio.sleep(0.15)
        assert len(rec.calls) == 1  # the reload is running (held open)
        for _ in range(3):
            watcher.notify()
        await asyncio.sleep(0.15)
        assert len(rec.calls) == 1  # never two reloads at once
        rec.release.set()
        await asyncio.sleep(0.2)
        assert len(rec.calls) == 2  # the three events during the reload: one more reload, not three
    finally:
        await watcher.close()


async def test_close_ends_the_watch_promptly(tmp_path: Path) -> None:
    (tmp_path / "g.hcl").write_text("")
    watcher = FileWatcher(str(tmp_path / "g.hcl"), "", _noop)
    watcher.start()
    await asyncio.sleep(0.1)
    started = time.monotonic()
    await watcher.close()
    assert time.monotonic() - started < 1.0


async def test_a_missing_directory_is_logged_not_raised(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    watcher = FileWatcher(str(tmp_path / "g.hcl"), str(tmp_path / "gone"), _noop)
    watcher.start()
    await asyncio.sleep(0.2)
    await watcher.close()
    assert "cannot watch" in caplog.text


def _config_files(tmp_path: Path) -> tuple[Path, Path]:
    main = tmp_path / "gateway.hcl"
    main.write_text(
        'providers { file { watch = true\n directory = "conf.d" } }\nentrypoints "web" { address = "127.0.0.1:0" }\n'
        'routers "r" { rule = "Path(`/`)"; service = "s" }\n'
        'services "s" { load_balancer { servers = [{ url = "http://127.0.0.1:9" }] } }\n')
    conf_d = tmp_path / "conf.d"
    conf_d.mkdir()
    (conf_d / "a.hcl").write_text('routers "a" { rule = "Path(`/a`)"; service = "s" }\n')
    return main, conf_d


@pytest.mark.parametrize(
    ("change", "differs"),
    [
        (lambda main, d: None, False),
        (lambda main, d: main.write_text(main.read_text() + "# a comment\n"), True),
        (lambda main, d: (d / "a.hcl").write_text('routers "a" { rule = "Path(`/b`)"; service = "s" }\n'), True),
        (lambda main, d: (d / "b.hcl").write_text(""), True),  # a new directory file
        (lambda main, d: (d / "a.hcl").unlink(), True),
        (lambda main, d: (d / ".b.hcl").write_text("x"), False),  # not configuration (§2.5)
        (lambda main, d: (d / "notes.txt").write_text("x"), False),
        (lambda main, d: main.unlink(), True),
    ],
)
async def test_catch_up_reloads_only_when_the_files_differ_from_what_was_read(
        tmp_path: Path, change: Callable[[Path, Path], object], differs: bool) -> None:
    main, conf_d = _config_files(tmp_path)
    config = GatewayConfig.from_file(str(main))
    assert config.providers.file is not None
    directory = config.providers.file.directory
    assert sorted(config.sources) == sorted([str(main), directory + "/a.hcl"])
    change(main, conf_d)
    rec = Recorder()
    watcher = FileWatcher(str(main), directory, rec, debounce=0.05)
    watcher.start()
    try:
        await watcher.armed()
        assert watcher.catch_up(str(main), directory, config.sources) is differs
        await asyncio.sleep(0.3)
        assert len(rec.calls) == (1 if differs else 0)  # a difference reloads like a change event
    finally:
        await watcher.close()
