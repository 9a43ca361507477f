"""The ``box`` scale executor (SPEC §8.5) against a fake Box API on 127.0.0.1: the scale request on the wire, the
errors it reports, the endpoints it derives from a poll, and the poll cadence of ``run``."""

from __future__ import annotations

import asyncio
import json
import re

import pytest
from fake_scale_api import FakeApi, Request, Sink, answer, response

from a3s_gateway.config.model import BoxExecutorConfig
from a3s_gateway.scaling.executors import ExecutorError
from a3s_gateway.scaling.executors.box import BoxExecutor

STATIC = ["http://127.0.0.1:7001", "http://127.0.0.1:7002"]
ACCEPTED = {"accepted": True, "actual_replicas": 2, "message": "scaling"}


def box(api: FakeApi, sink: Sink | None = None, token: str = "", timeout: float = 2.0,
        target: str = "web") -> BoxExecutor:
    cfg = BoxExecutorConfig(url=api.url + "/", token=token, timeout=timeout)
    return BoxExecutor(target, cfg, sink if sink is not None else Sink(), STATIC)


async def test_kind() -> None:
    async with FakeApi(answer(200, ACCEPTED)) as api:
        assert box(api).kind == "box"


async def test_scale_posts_the_exact_body_with_the_bearer_token() -> None:
    async with FakeApi(answer(200, ACCEPTED)) as api:
        executor = box(api, token="s3cr3t", target="my svc/v1")
        assert await executor.scale(3, 1, "load 4.2 > target") == 2
    (req,) = api.requests
    assert (req.method, req.target) == ("POST", "/v1/scale/my%20svc%2Fv1")
    assert req.body == (b'{"service":"my svc/v1","direction":"Up","current_replicas":1,"desired_replicas":3,'
                        b'"reason":"load 4.2 > target"}')
    assert req.header("Authorization") == "Bearer s3cr3t"
    assert req.header("Content-Type") == "application/json"
    assert req.header("Content-Length") == str(len(req.body))
    assert req.header("Host") == f"127.0.0.1:{api.port}"


@pytest.mark.parametrize(("desired", "current"), [(0, 2), (2, 2)])
async def test_direction_down_unless_desired_is_greater(desired: int, current: int) -> None:
    async with FakeApi(answer(200, ACCEPTED)) as api:
        await box(api).scale(desired, current, "idle")
    sent = json.loads(api.requests[0].body)
    assert sent["direction"] == "Down"
    assert (sent["desired_replicas"], sent["current_replicas"]) == (desired, current)


async def by_method(request: Request, writer: asyncio.StreamWriter) -> None:
    writer.write(response(200, ACCEPTED if request.method == "POST" else {"replicas": 1}))


async def test_no_token_no_authorization_header() -> None:
    async with FakeApi(by_method) as api:
        await box(api).scale(1, 0, "cold start")
        await box(api).poll()
    assert [r.header("Authorization") for r in api.requests] == [None, None]


async def test_not_accepted_raises_with_boxs_message() -> None:
    async with FakeApi(answer(200, {"accepted": False, "actual_replicas": 1, "message": "quota exceeded"})) as api:
        with pytest.raises(ExecutorError, match="did not accept scaling web to 5 replicas: quota exceeded"):
            await box(api).scale(5, 1, "load")


@pytest.mark.parametrize("status", [400, 404, 500, 503])
async def test_non_2xx_raises_with_the_status(status: int) -> None:
    async with FakeApi(answer(status, b"box is down")) as api:
        with pytest.raises(ExecutorError, match=f"status {status}: box is down"):
            await box(api).scale(2, 1, "load")
        with pytest.raises(ExecutorError, match=f"GET .*status {status}"):
            await box(api).poll()


async def test_2xx_other_than_200_is_accepted() -> None:
    async with FakeApi(answer(202, ACCEPTED)) as api:
        assert await box(api).scale(2, 1, "load") == 2


async def test_timeout_raises() -> None:
    async def silent(request: Request, writer: asyncio.StreamWriter) -> None:
        await asyncio.Event().wait()

    async with FakeApi(silent) as api:
        executor = box(api, timeout=0.2)
        with pytest.raises(ExecutorError, match=r"timed out after 0\.2s"):
            await executor.scale(2, 1, "load")
        with pytest.raises(ExecutorError, match=r"timed out after 0\.2s"):
            await executor.poll()


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"{not json", "invalid JSON"),
        (b"[]", "not a JSON object"),
        (b'{"accepted": "yes", "actual_replicas": 2}', "no boolean 'accepted'"),
        (b'{"accepted": true, "actual_replicas": -1}', "no valid 'actual_replicas'"),
        (b'{"accepted": true}', "no valid 'actual_replicas'"),
    ],
)
async def test_bad_scale_reply_raises(body: bytes, error: str) -> None:
    async with FakeApi(answer(200, body)) as api:
        with pytest.raises(ExecutorError, match=error):
            await box(api).scale(2, 1, "load")


async def test_unreachable_api_raises() -> None:
    async with FakeApi(answer(200, ACCEPTED)) as api:
        executor = box(api)
    with pytest.raises(ExecutorError, match=re.escape(f"box POST http://127.0.0.1:{api.port}/v1/scale/web")):
        await executor.scale(2, 1, "load")


async def test_poll_reports_ready_endpoints_only() -> None:
    state = {"replicas": 3, "endpoints": [
        {"url": "http://10.0.0.5:8000", "ready": True},
        {"url": "http://10.0.0.6:8000", "ready": False},
        {"url": "http://10.0.0.7:8000"},
        {"url": "http://10.0.0.8:8000", "ready": True},
    ]}
    sink = Sink()
    async with FakeApi(answer(200, state)) as api:
        assert await box(api, sink, token="t").poll() == 3
    assert sink.calls == [["http://10.0.0.5:8000", "http://10.0.0.8:8000"]]
    (req,) = api.requests
    assert (req.method, req.target, req.body) == ("GET", "/v1/scale/web", b"")
    assert req.header("Authorization") == "Bearer t"


async def test_poll_listed_but_none_ready_reports_no_endpoints() -> None:
    sink = Sink()
    state = {"replicas": 1, "endpoints": [{"url": "http://10.0.0.5:8000", "ready": False}]}
    async with FakeApi(answer(200, state)) as api:
        await box(api, sink).poll()
    assert sink.calls == [[]]


@pytest.mark.parametrize("state", [{"replicas": 1}, {"replicas": 1, "endpoints": []},
                                   {"replicas": 3, "endpoints": None}])
async def test_poll_without_endpoints_reports_the_static_servers_for_boxs_replicas(state: dict[str, int]) -> None:
    sink = Sink()
    async with FakeApi(answer(200, state)) as api:
        assert await box(api, sink).poll() == state["replicas"]
    assert sink.calls == [STATIC] and sink.replicas == [state["replicas"]]  # two servers standing in for N replicas


@pytest.mark.parametrize("state", [{"replicas": 0}, {"replicas": 0, "endpoints": []}])
async def test_poll_of_zero_replicas_reports_no_endpoint(state: dict[str, object]) -> None:
    """While Box runs no replica nothing is eligible: a request waits and asks Box for one (§8.4, §15.1)."""
    sink = Sink()
    async with FakeApi(answer(200, state)) as api:
        assert await box(api, sink).poll() == 0
    assert sink.calls == [[]]


async def test_an_accepted_scale_to_zero_removes_the_standing_in_servers_at_once() -> None:
    sink = Sink()
    async with FakeApi(answer(200, {"accepted": True, "actual_replicas": 0, "message": "ok"})) as api:
        await box(api, sink).scale(0, 1, "idle")
    assert sink.calls == [[]]


async def test_a_scale_to_zero_keeps_the_endpoints_box_listed_until_it_reports_them_gone() -> None:
    state = {"replicas": 1, "endpoints": [{"url": "http://10.0.0.5:8000", "ready": True}]}

    async def handler(request: Request, writer: asyncio.StreamWriter) -> None:
        writer.write(response(200, {"accepted": True, "actual_replicas": 0} if request.method == "POST" else state))

    sink = Sink()
    async with FakeApi(handler) as api:
        executor = box(api, sink)
        await executor.poll()
        await executor.scale(0, 1, "idle")  # the replica drains and stops on Box's side; the next poll tells
    assert sink.calls == [["http://10.0.0.5:8000"]]


@pytest.mark.parametrize("body", [b'{"endpoints": []}', b'{"replicas": "2"}', b'{"replicas": 1, "endpoints": {}}',
                                  b'{"replicas": 1, "endpoints": [{"ready": true}]}'])
async def test_poll_bad_reply_raises_and_reports_nothing(body: bytes) -> None:
    sink = Sink()
    async with FakeApi(answer(200, body)) as api:
        with pytest.raises(ExecutorError):
            await box(api, sink).poll()
    assert sink.calls == []


async def count_polls(fast: list[bool], seconds: float = 1.5) -> int:
    """Polls made by ``run`` within ``seconds``; ``fast[0]`` is what ``fast()`` answers (the test may flip it)."""
    async with FakeApi(answer(200, {"replicas": 1})) as api:
        task = asyncio.create_task(box(api).run(lambda: fast[0], lambda message: None))
        await asyncio.sleep(seconds)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    return len(api.requests)


async def test_run_polls_every_second_when_fast() -> None:
    assert 2 <= await count_polls([True]) <= 3  # at 0 s and 1 s


async def test_run_polls_every_ten_seconds_when_not_fast() -> None:
    assert await count_polls([False]) == 1


async def test_run_turns_fast_within_a_second_of_a_slow_poll() -> None:
    fast = [False]
    asyncio.get_running_loop().call_later(0.3, fast.__setitem__, 0, True)
    assert 2 <= await count_polls(fast) <= 3


async def test_run_keeps_polling_after_an_error() -> None:
    statuses = [500]

    async def flaky(request: Request, writer: asyncio.StreamWriter) -> None:
        status = statuses.pop() if statuses else 200
        writer.write(response(status, {"replicas": 1, "endpoints": [{"url": "http://10.0.0.9:80", "ready": True}]}))

    errors: list[str] = []
    sink = Sink()
    async with FakeApi(flaky) as api:
        task = asyncio.create_task(box(api, sink).run(lambda: True, errors.append))
        assert await sink.next(3.0) == STATIC  # Box cannot be used: the static servers serve meanwhile
        assert await sink.next(3.0) == ["http://10.0.0.9:80"]
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert len(errors) == 1 and "status 500" in errors[0]
    assert len(api.requests) == 2


@pytest.mark.parametrize("first", [{"replicas": 0}, {"replicas": 2}])
async def test_an_unreachable_api_falls_back_to_the_static_servers(first: dict[str, int]) -> None:
    """Box down (from the start, or after it reported no endpoints of its own): the servers serve, errors go on."""
    sink = Sink()
    errors: list[str] = []
    async with FakeApi(answer(200, first)) as api:
        executor = box(api, sink)
        await executor.poll()
    task = asyncio.create_task(executor.run(lambda: True, errors.append))  # the API is gone now
    try:
        assert await sink.next() == ([] if first["replicas"] == 0 else STATIC)  # the answered poll
        assert await sink.next() == STATIC and sink.replicas[-1] is None
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert errors and "box GET" in errors[0]


async def test_an_unreachable_api_keeps_the_endpoints_box_listed() -> None:
    sink = Sink()
    errors: list[str] = []
    state = {"replicas": 1, "endpoints": [{"url": "http://10.0.0.5:8000", "ready": True}]}
    async with FakeApi(answer(200, state)) as api:
        executor = box(api, sink)
        await executor.poll()
    task = asyncio.create_task(executor.run(lambda: True, errors.append))
    try:
        await asyncio.sleep(1.5)  # two failed polls
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert len(errors) == 2 and sink.calls == [["http://10.0.0.5:8000"]]


async def test_run_polls_at_once_after_an_accepted_scale_request() -> None:
    """The replica Box starts for a waiting request is seen without waiting for the next period (§8.4)."""
    polls: list[float] = []
    loop = asyncio.get_running_loop()

    async def handler(request: Request, writer: asyncio.StreamWriter) -> None:
        if request.method == "GET":
            polls.append(loop.time())
        writer.write(response(200, ACCEPTED if request.method == "POST" else {"replicas": 1}))

    async with FakeApi(handler) as api:
        executor = box(api)
        task = asyncio.create_task(executor.run(lambda: False, lambda message: None))  # slow: every 10 s
        try:
            while not polls:
                await asyncio.sleep(0.01)
            asked = loop.time()
            await executor.scale(1, 0, "cold start")
            while len(polls) < 2 and loop.time() - asked < 3:
                await asyncio.sleep(0.01)
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
    assert len(polls) == 2 and polls[1] - asked < 0.5


async def test_close() -> None:
    async with FakeApi(answer(200, ACCEPTED)) as api:
        executor = box(api)
        await executor.close()
