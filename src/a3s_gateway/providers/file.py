"""File provider: watch the main configuration file and ``providers.file.directory`` (SPEC §12.2, §13.6).

Change events are debounced on the trailing edge (a reload starts ``debounce`` seconds after the last event); an
event that arrives while a reload runs schedules exactly one more reload afterwards, so no save is lost. Parent
directories are watched (not the files themselves), so files created, deleted or replaced by an atomic rename are
all seen; events are filtered by path.

A save between reading the configuration and arming the watches (the gateway already listens by then) raises no
event: once armed (:meth:`FileWatcher.armed`), :meth:`FileWatcher.catch_up` compares the files with what the
running configuration was read from and reloads when they differ.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable, Mapping

from watchfiles import Change, awatch

from .._aio import cancel_and_wait
from ..config.load import current_sources

log = logging.getLogger("a3s_gateway.providers.file")

DEBOUNCE: float = 0.2  # seconds after the last event (SPEC §13.6)
# watchfiles groups raw events until STEP_MS of quiet (at most GROUP_MS) before handing them over; our own trailing
# timer then measures DEBOUNCE from the batch that brought the last event.
STEP_MS = 50
GROUP_MS = 200
STOP_WAIT = 2.0  # seconds to wait for the watch thread after asking it to stop (it checks every STEP_MS)


class FileWatcher:
    """Watch ``main`` and the ``*.hcl`` files directly in ``directory`` (``""`` = none); call ``reload`` debounced.

    ``reload`` is awaited from the watcher's own task and must not raise for a bad configuration (it logs and keeps
    the running generation); anything else it raises is logged here and watching continues.
    """

    def __init__(
        self, main: str, directory: str, reload: Callable[[], Awaitable[None]], *, debounce: float = DEBOUNCE
    ) -> None:
        self.main = os.path.abspath(main)
        self.directory = os.path.abspath(directory) if directory else ""
        self.debounce = debounce
        self._reload = reload
        self._wake = asyncio.Event()
        self._last_event = 0.0
        self._stop = asyncio.Event()
        self._armed = asyncio.Event()  # the OS watches of the current targets exist
        self._events: asyncio.Task[None] | None = None
        self._old_events: set[asyncio.Task[None]] = set()
        self._reloader: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def targets(self) -> tuple[str, str]:
        """The watched (main file, directory)."""
        return self.main, self.directory

    def watched_directories(self) -> list[str]:
        """The directories handed to the OS watcher: the main file's and the provider directory."""
        dirs = [os.path.dirname(self.main)]
        if self.directory and self.directory not in dirs:
            dirs.append(self.directory)
        return dirs

    def relevant(self, change: Change, path: str) -> bool:
        """Whether a change of ``path`` can change the configuration (§2.5 file selection)."""
        path = os.path.abspath(path)
        if path == self.main:
            return True
        parent, name = os.path.split(path)
        # "..data" and "..<timestamp>": Kubernetes swaps a mounted ConfigMap by renaming a symlink, never the file
        if name.startswith(".."):
            return parent == os.path.dirname(self.main) or parent == self.directory
        return parent == self.directory and name.endswith(".hcl") and not name.startswith(".")

    def start(self) -> None:
        """Start watching (call from the running loop); the OS watches exist once the loop has run one step."""
        loop = asyncio.get_running_loop()
        self._reloader = loop.create_task(self._reload_loop())
        self._events = loop.create_task(self._watch(self._stop, self._armed))
        log.info("watching %s for configuration changes", ", ".join(self._describe()))

    def retarget(self, main: str, directory: str) -> bool:
        """Watch other paths (a reload changed ``providers.file.directory``); events keep the same debounce.
        False when the paths are the ones watched already (nothing to arm)."""
        main = os.path.abspath(main)
        directory = os.path.abspath(directory) if directory else ""
        if (main, directory) == self.targets and self._events is not None and not self._events.done():
            return False
        self.main, self.directory = main, directory
        self._stop.set()
        if self._events is not None and not self._events.done():
            self._old_events.add(self._events)
            self._events.add_done_callback(self._old_events.discard)
        self._stop = asyncio.Event()
        self._armed = asyncio.Event()
        self._events = asyncio.get_running_loop().create_task(self._watch(self._stop, self._armed))
        log.info("now watching %s for configuration changes", ", ".join(self._describe()))
        return True

    async def armed(self) -> None:
        """Return once the OS watches of the current paths exist (or failed: then an error is logged)."""
        await self._armed.wait()

    def catch_up(self, main: str, directory: str, loaded: Mapping[str, str]) -> bool:
        """After :meth:`armed`: reload (debounced, as for an event) when the configuration files ``main`` and
        ``directory`` (as the configuration names them) differ from ``loaded`` (``GatewayConfig.sources``: what the
        running configuration was read from): a save made before the watches existed. True when they differ."""
        if current_sources(main, directory) == dict(loaded):
            return False
        log.info("%s changed since the configuration was read; reloading", ", ".join(self._describe()))
        self.notify()
        return True

    def notify(self) -> None:
        """One relevant change: (re)arm the trailing debounce timer."""
        self._last_event = asyncio.get_running_loop().time()
        self._wake.set()

    async def close(self) -> None:
        """Stop watching; a reload in progress elsewhere is cancelled (the gateway is stopping anyway).

        Called from within a reload this watcher started (the new configuration turned watching off), that reload
        completes and the watcher ends after it.
        """
        self._closed = True
        self._stop.set()
        watchers = [t for t in (self._events, *self._old_events) if t is not None]
        if self._reloader is not None and self._reloader is not asyncio.current_task():
            self._reloader.cancel()
            watchers.append(self._reloader)
        if not watchers:
            return
        await asyncio.wait(watchers, timeout=STOP_WAIT)
        await cancel_and_wait(watchers)  # only if the watch thread did not answer the stop request in time

    def _describe(self) -> list[str]:
        return [self.main] + ([os.path.join(self.directory, "*.hcl")] if self.directory else [])

    async def _watch(self, stop: asyncio.Event, armed: asyncio.Event) -> None:
        dirs = self.watched_directories()
        # Waiters on ``armed`` run after this task's first step, and in that step awatch installs the OS watches
        # (its RustNotify is built before its first await): they see the watches in place, or the error logged.
        armed.set()
        try:
            async for _changes in awatch(
                *dirs, watch_filter=self.relevant, debounce=GROUP_MS, step=STEP_MS, stop_event=stop, recursive=False
            ):
                self.notify()
        except OSError as e:  # e.g. the directory was removed: SIGHUP (or a later reload) can restart watching
            log.error("cannot watch %s: %s; file changes are not picked up until the next reload",
                      ", ".join(dirs), e.strerror or e)

    async def _reload_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._closed:
            await self._wake.wait()
            while True:  # trailing edge: wait until `debounce` has passed since the last event
                delay = self._last_event + self.debounce - loop.time()
                if delay <= 0:
                    break
                await asyncio.sleep(delay)
            # clear before reloading: an event during the reload sets it again -> exactly one more reload
            self._wake.clear()
            try:
                await self._reload()
            except Exception:
                log.exception("reload after a change of %s failed unexpectedly", ", ".join(self._describe()))
