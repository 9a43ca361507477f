"""The cold-start queue (SPEC §8.4) on a fake clock and a fake timer: FIFO release, the size bound, expiry of the
oldest waiters, removal of a waiter whose client left, the shutdown flush, and the counters the metrics read."""

from __future__ import annotations

from typing import Any

from a3s_gateway.scaling.buffer import ColdStartQueue


class FakeLoop:
    """``call_later`` recorded, fired by the test."""

    def __init__(self) -> None:
        self.timers: list[tuple[float, Any, bool]] = []

    def call_later(self, delay: float, callback: Any) -> Any:
        loop = self

        class Handle:
            def cancel(self) -> None:
                loop.timers = [t for t in loop.timers if t[1] is not callback or t[0] != delay]

        self.timers.append((delay, callback, True))
        return Handle()


class Waiter:
    def __init__(self, name: str, log: list[str]) -> None:
        self.name, self.log = name, log

    def resume_held(self) -> None:
        self.log.append(f"{self.name}:go")

    def hold_expired(self) -> None:
        self.log.append(f"{self.name}:504")

    def hold_shutdown(self) -> None:
        self.log.append(f"{self.name}:503")


def make(size: int = 3, timeout: float = 30.0) -> tuple[ColdStartQueue, FakeLoop, list[float], list[str]]:
    loop, now, log = FakeLoop(), [100.0], []
    return ColdStartQueue(loop, lambda: now[0], size, timeout), loop, now, log  # type: ignore[arg-type]


def test_fifo_release_and_the_front_of_the_line() -> None:
    q, _, now, log = make()
    a, b, c = (Waiter(n, log) for n in "abc")
    assert q.push(a) and q.push(b) and q.push(c, front=True)
    now[0] += 2.0
    q.release(2)
    assert log == ["c:go", "a:go"] and len(q) == 1 and q.released == 2
    assert q.wait.count() == 2


def test_full_queue_refuses_and_counts() -> None:
    q, _, _, log = make(size=1)
    assert q.push(Waiter("a", log))
    assert not q.push(Waiter("b", log))
    assert q.rejections["full"] == 1 and len(q) == 1


def test_oldest_waiters_expire_after_the_timeout_one_timer_for_the_oldest() -> None:
    q, loop, now, log = make(timeout=30.0)
    a, b = Waiter("a", log), Waiter("b", log)
    q.push(a)
    now[0] += 10.0
    q.push(b)
    assert [d for d, _, _ in loop.timers] == [20.0]  # one timer, for the oldest entry (30 s after it came)
    now[0] += 20.0
    loop.timers[-1][1]()  # a's deadline
    assert log == ["a:504"] and q.rejections["timeout"] == 1 and len(q) == 1
    assert abs(loop.timers[-1][0] - 10.0) < 1e-9  # re-armed for b


def test_a_waiter_whose_client_left_is_removed_and_counted() -> None:
    q, _, _, log = make()
    a, b = Waiter("a", log), Waiter("b", log)
    q.push(a)
    q.push(b)
    q.remove(a, "client_gone")
    q.release(5)
    assert log == ["b:go"] and q.rejections["client_gone"] == 1


def test_flush_answers_everyone_and_leaves_no_timer() -> None:
    q, loop, _, log = make()
    q.push(Waiter("a", log))
    q.push(Waiter("b", log))
    q.flush()
    assert log == ["a:503", "b:503"] and q.rejections["shutdown"] == 2 and not q and loop.timers == []
