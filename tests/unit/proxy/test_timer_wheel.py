"""The listener's TimerWheel (issue 20): one loop timer for every connection's timeout, fired at most a tick late."""

from __future__ import annotations

import asyncio
from typing import Any

from a3s_gateway.proxy.http1 import TICK, TimerWheel


class FakeLoop:
    def __init__(self) -> None:
        self.now = 0.0
        self.timers: list[tuple[float, Any]] = []

    def time(self) -> float:
        return self.now

    def get_debug(self) -> bool:
        return False

    def call_at(self, when: float, callback: Any) -> Any:
        loop = self

        class Handle(asyncio.TimerHandle):
            def cancel(self) -> None:
                loop.timers[:] = [t for t in loop.timers if t[1] is not self]

        handle = Handle(when, callback, (), self)  # type: ignore[arg-type]
        self.timers.append((when, handle))
        return handle

    def advance(self, to: float) -> None:
        """Run the timers due by ``to``, in order."""
        while True:
            due = sorted((t for t in self.timers if t[0] <= to), key=lambda t: t[0])
            if not due:
                break
            when, handle = due[0]
            self.timers.remove((when, handle))
            self.now = when
            handle._run()
        self.now = to


class Conn:
    def __init__(self, wheel: TimerWheel, name: str) -> None:
        self.wheel = wheel
        self.name = name
        self.tick = 0
        self.deadline = 0.0
        self.fired: list[float] = []

    def arm(self, deadline: float) -> None:
        self.deadline = deadline
        if self.tick and self.tick * TICK <= deadline + TICK:
            return
        if self.tick:
            self.wheel.remove(self, self.tick)
        self.tick = self.wheel.add(self, deadline)

    def tick_due(self, tick: int) -> None:
        if tick != self.tick:
            return
        self.tick = 0
        now = self.wheel.loop.time()
        if now < self.deadline:
            self.tick = self.wheel.add(self, self.deadline)
            return
        self.fired.append(now)


def test_timeouts_fire_in_order_within_a_tick_on_one_loop_timer() -> None:
    loop = FakeLoop()
    wheel = TimerWheel(loop)
    a, b, c = Conn(wheel, "a"), Conn(wheel, "b"), Conn(wheel, "c")
    a.arm(0.35)
    b.arm(0.35)
    c.arm(5.0)
    assert len(loop.timers) == 1  # one loop timer, at the earliest tick
    loop.advance(0.3)
    assert not a.fired
    loop.advance(0.5)
    assert 0.35 <= a.fired[0] <= 0.35 + TICK + 1e-9 and b.fired == a.fired and not c.fired
    assert len(loop.timers) == 1 and len(wheel) == 1
    loop.advance(6.0)
    assert 5.0 <= c.fired[0] <= 5.0 + TICK + 1e-9
    assert not loop.timers and len(wheel) == 0


def test_a_later_deadline_is_rechecked_lazily_and_an_earlier_one_refiled() -> None:
    loop = FakeLoop()
    wheel = TimerWheel(loop)
    a = Conn(wheel, "a")
    a.arm(1.0)
    first = a.tick
    a.arm(3.0)  # later: not re-filed, checked when tick `first` comes
    assert a.tick == first
    loop.advance(1.2)
    assert not a.fired and a.tick != first  # re-filed for 3.0
    a.arm(2.0)  # earlier than the filed tick: re-filed at once
    loop.advance(2.2)
    assert len(a.fired) == 1 and 2.0 <= a.fired[0] <= 2.0 + TICK + 1e-9


def test_a_removed_connection_never_fires_and_close_stops_the_timer() -> None:
    loop = FakeLoop()
    wheel = TimerWheel(loop)
    a, b = Conn(wheel, "a"), Conn(wheel, "b")
    a.arm(0.5)
    b.arm(0.5)
    wheel.remove(a, a.tick)
    loop.advance(1.0)
    assert not a.fired and len(b.fired) == 1
    b.arm(2.0)
    wheel.close()
    loop.advance(3.0)
    assert len(b.fired) == 1 and not loop.timers
