"""Reflectors (providers/kube_watch.py) and the API client (http/kube.py) against the fake API server
(tests/support/kube_fake.py): list then watch from the list's version, bookmarks, relist on 410 (status and ERROR
event), watch restart from the last version, backoff on errors, the store kept while the API fails, selectors,
and the connection order (kubeconfig, in-cluster, $KUBECONFIG, ~/.kube/config)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from kube_fake import FakeCluster
from loops import Run

from a3s_gateway.http import kube
from a3s_gateway.providers.kube_watch import (
    ENDPOINT_SLICES,
    INGRESS_CLASSES,
    INGRESSES,
    SECRETS,
    Backoff,
    Reflector,
)


def ingress(name: str, ns: str = "default", labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": ns, "labels": labels or {}},
            "spec": {"rules": [{"host": f"{name}.example"}]}}


async def until(check: Callable[[], bool], timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not check():
        assert loop.time() < end, "condition not reached in time"
        await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def reflecting(cluster: FakeCluster, tmp_path: Path, reflector: Reflector) -> AsyncIterator[kube.KubeClient]:
    client = await kube.connect(cluster.kubeconfig(tmp_path / "kubeconfig"))
    task = asyncio.create_task(reflector.run(client))
    try:
        yield client
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await client.close()


def keys(r: Reflector) -> set[tuple[str, str]]:
    return set(r.items)


def test_list_then_watch_follows_changes_and_bookmarks(run: Run, tmp_path: Path) -> None:
    async def main() -> None:
        async with FakeCluster() as cluster:
            cluster.put("ingresses", ingress("a"))
            changes: list[int] = []
            r = Reflector(INGRESSES, lambda: changes.append(1))
            async with reflecting(cluster, tmp_path, r) as client:
                await asyncio.wait_for(r.synced.wait(), 5)
                assert keys(r) == {("default", "a")} and len(changes) == 1
                await until(lambda: cluster.watch_count("ingresses") == 1)
                (listed,) = cluster.calls("ingresses", watch=False)
                (watch,) = cluster.calls("ingresses", watch=True)
                assert watch.query["resourceVersion"] == listed_version(cluster, 0)
                assert watch.query["allowWatchBookmarks"] == "true"
                assert listed.headers["authorization"] == "Bearer fake-token"
                assert client.source.startswith("kubeconfig ")

                cluster.put("ingresses", ingress("b", "other"))
                await until(lambda: ("other", "b") in r.items)
                cluster.put("ingresses", {**ingress("a"), "spec": {"rules": []}})
                await until(lambda: r.items[("default", "a")]["spec"] == {"rules": []})
                cluster.delete("ingresses", "other", "b")
                await until(lambda: keys(r) == {("default", "a")})
                assert len(changes) == 4

                cluster.put("services", {"metadata": {"name": "unrelated"}})  # moves the version on
                cluster.bookmark()
                await until(lambda: r.version == str(cluster.version))
                assert len(changes) == 4  # a bookmark changes nothing but the version
                # the watch ends (timeoutSeconds): watch again from the bookmark's version, no new list
                cluster.end_watches()
                await until(lambda: len(cluster.calls("ingresses", watch=True)) == 2)
                assert cluster.calls("ingresses", watch=True)[1].query["resourceVersion"] == str(cluster.version)
                assert len(cluster.calls("ingresses", watch=False)) == 1

    run(main())


def listed_version(cluster: FakeCluster, index: int) -> str:
    """The resourceVersion the fake answered to the index-th ingress list (the version at that time)."""
    # lists answer the store's version; the test made no change between list and watch
    return cluster.calls("ingresses", watch=True)[index].query["resourceVersion"]


@pytest.mark.parametrize("gone_as", ["status", "event"])
def test_410_relists_and_drops_what_went_away_meanwhile(run: Run, tmp_path: Path, gone_as: str) -> None:
    async def main() -> None:
        async with FakeCluster() as cluster:
            cluster.gone_as = gone_as
            cluster.put("ingresses", ingress("a"))
            cluster.put("ingresses", ingress("b"))
            r = Reflector(INGRESSES, lambda: None, backoff=Backoff(0.05, 0.2))
            async with reflecting(cluster, tmp_path, r):
                await until(lambda: cluster.watch_count("ingresses") == 1)
                # while the watch is down, b goes and c comes, and the history is compacted: the watch from the
                # old version gets 410 and the reflector lists again
                cluster.end_watches()
                await until(lambda: cluster.watch_count("ingresses") == 1 and
                            len(cluster.calls("ingresses", watch=True)) == 2)
                cluster.end_watches()
                await until(lambda: cluster.watch_count("ingresses") == 0)
                cluster.fail["ingresses"] = [503]  # hold the re-watch for a backoff step
                await until(lambda: cluster.fail["ingresses"] == [])
                cluster.delete("ingresses", "default", "b")
                cluster.put("ingresses", ingress("c"))
                cluster.compact()
                await until(lambda: keys(r) == {("default", "a"), ("default", "c")})
                assert r.lists == 2
                assert r.error == ""

    run(main())


def test_gone_event_on_an_open_watch_relists(run: Run, tmp_path: Path) -> None:
    async def main() -> None:
        async with FakeCluster() as cluster:
            cluster.put("ingresses", ingress("a"))
            r = Reflector(INGRESSES, lambda: None)
            async with reflecting(cluster, tmp_path, r):
                await until(lambda: cluster.watch_count("ingresses") == 1)
                cluster.gone()
                await until(lambda: r.lists == 2 and cluster.watch_count("ingresses") == 1)
                assert cluster.calls("ingresses", watch=True)[-1].query["resourceVersion"] == str(cluster.version)

    run(main())


def test_errors_back_off_exponentially_and_keep_the_store(run: Run, tmp_path: Path) -> None:
    async def main() -> None:
        async with FakeCluster() as cluster:
            cluster.put("ingresses", ingress("a"))
            r = Reflector(INGRESSES, lambda: None, backoff=Backoff(0.05, 0.2))
            async with reflecting(cluster, tmp_path, r):
                await until(lambda: cluster.watch_count("ingresses") == 1)
                cluster.down = True
                cluster.end_watches()
                loop = asyncio.get_running_loop()
                start, count = loop.time(), len(cluster.requests)
                await until(lambda: len(cluster.requests) >= count + 5)
                times = [loop.time() - start]
                assert "503" in r.error and "the API server is down" in r.error
                assert keys(r) == {("default", "a")}  # stale kept: the API failing empties nothing
                await asyncio.sleep(0.5)
                # 0.05 + 0.1 + 0.2 + 0.2 ... : capped, so about 2-3 more calls in 0.5 s, not dozens
                assert 1 <= len(cluster.requests) - count - 5 <= 5, times
                cluster.down = False
                cluster.put("ingresses", ingress("b"))
                await until(lambda: ("default", "b") in r.items)
                assert r.error == "" and r.lists == 1  # the version was still valid: watched from it, no list

    run(main())


def test_first_list_failure_is_retried(run: Run, tmp_path: Path) -> None:
    async def main() -> None:
        async with FakeCluster() as cluster:
            cluster.put("ingresses", ingress("a"))
            cluster.fail["ingresses"] = [500, 500]
            r = Reflector(INGRESSES, lambda: None, backoff=Backoff(0.05, 1))
            async with reflecting(cluster, tmp_path, r):
                await asyncio.wait_for(r.synced.wait(), 5)
                assert keys(r) == {("default", "a")}
                assert len(cluster.calls("ingresses", watch=False)) == 3

    run(main())


def test_namespace_and_selectors(run: Run, tmp_path: Path) -> None:
    async def main() -> None:
        async with FakeCluster() as cluster:
            cluster.put("ingresses", ingress("a", "team", {"gw": "yes"}))
            cluster.put("ingresses", ingress("b", "team", {"gw": "no"}))
            cluster.put("ingresses", ingress("c", "other", {"gw": "yes"}))
            cluster.put("secrets", {"metadata": {"name": "tls", "namespace": "team"}, "type": "kubernetes.io/tls"})
            cluster.put("secrets", {"metadata": {"name": "pw", "namespace": "team"}, "type": "Opaque"})
            cluster.put("ingressclasses", {"metadata": {"name": "a3s"}})
            ing = Reflector(INGRESSES, lambda: None, namespace="team", label_selector="gw=yes")
            sec = Reflector(SECRETS, lambda: None, namespace="team", field_selector="type=kubernetes.io/tls")
            cls = Reflector(INGRESS_CLASSES, lambda: None, namespace="team")  # cluster-scoped: no namespace
            async with reflecting(cluster, tmp_path, ing), reflecting(cluster, tmp_path, sec), \
                    reflecting(cluster, tmp_path, cls):
                for r in (ing, sec, cls):
                    await asyncio.wait_for(r.synced.wait(), 5)
                assert keys(ing) == {("team", "a")}
                assert keys(sec) == {("team", "tls")}
                assert keys(cls) == {("", "a3s")}
                assert cluster.calls("ingresses")[0].path == "/apis/networking.k8s.io/v1/namespaces/team/ingresses"
                assert cluster.calls("ingresses")[0].query["labelSelector"] == "gw=yes"
                assert cluster.calls("ingressclasses")[0].path == "/apis/networking.k8s.io/v1/ingressclasses"
                cluster.put("ingresses", ingress("d", "team", {"gw": "yes"}))
                cluster.put("ingresses", ingress("e", "team", {"gw": "no"}))
                await until(lambda: ("team", "d") in ing.items)
                await asyncio.sleep(0.05)
                assert ("team", "e") not in ing.items

    run(main())


def test_bad_stream_is_an_error_then_recovers(run: Run, tmp_path: Path) -> None:
    async def main() -> None:
        async with FakeCluster() as cluster:
            r = Reflector(ENDPOINT_SLICES, lambda: None, backoff=Backoff(0.05, 0.1))
            async with reflecting(cluster, tmp_path, r):
                await until(lambda: cluster.watch_count("endpointslices") == 1)
                for w in cluster.watches:
                    w.queue.put_nowait({"type": "SURPRISE", "object": {"metadata": {"name": "x"}}})
                await until(lambda: "bad watch event 'SURPRISE'" in r.error)
                await until(lambda: cluster.watch_count("endpointslices") == 1)
                cluster.put("endpointslices", {"metadata": {"name": "s", "namespace": "default"}})
                await until(lambda: ("default", "s") in r.items and r.error == "")

    run(main())


def test_backoff_doubles_to_the_cap_and_resets() -> None:
    b = Backoff(0.5, 4)
    assert [b.next() for _ in range(6)] == [0.5, 1, 2, 4, 4, 4]
    b.reset()
    assert b.next() == 0.5


# --- connection order (SPEC §12.5) ------------------------------------------------------------------------------


def kubeconfig(path: Path, server: str) -> Path:
    path.write_text(f"apiVersion: v1\nkind: Config\ncurrent-context: c\nclusters:\n- name: c\n  cluster:\n"
                    f"    server: {server}\nusers:\n- name: u\n  user:\n    token: t\ncontexts:\n- name: c\n"
                    "  context:\n    cluster: c\n    user: u\n")
    return path


def test_connection_order(run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def main() -> None:
        explicit = kubeconfig(tmp_path / "explicit", "http://127.0.0.1:1")
        env = kubeconfig(tmp_path / "env", "http://127.0.0.1:2")
        home = tmp_path / "home"
        kubeconfig((home / ".kube").mkdir(parents=True) or home / ".kube" / "config", "http://127.0.0.1:3")
        token = tmp_path / "token"
        token.write_text("sa-token")
        ca = tmp_path / "ca.crt"
        ca.write_text("x")
        monkeypatch.setenv("HOME", str(home))
        monkeypatch.setenv("KUBECONFIG", str(env))
        monkeypatch.setattr(kube, "SERVICE_TOKEN_FILENAME", str(token))
        monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
        monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
        assert (await kube.connect(str(explicit))).host == "http://127.0.0.1:1"
        assert kube.find_source("") == "in-cluster service account"
        monkeypatch.delenv("KUBERNETES_SERVICE_HOST")
        assert (await kube.connect("")).host == "http://127.0.0.1:2"
        monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
        assert (await kube.connect("")).host == "http://127.0.0.1:3"
        assert kube.find_source("") == f"kubeconfig {home}/.kube/config"
        (home / ".kube" / "config").unlink()
        assert kube.find_source("") is None
        with pytest.raises(kube.KubeConfigError, match="no Kubernetes connection"):
            await kube.connect("")
        with pytest.raises(kube.KubeConfigError, match="no such file"):
            await kube.connect(str(tmp_path / "nope"))
        assert kube.find_source(str(tmp_path / "nope")) is None
        bad = tmp_path / "bad"
        bad.write_text("apiVersion: v1\nkind: Config\n")
        with pytest.raises(kube.KubeConfigError, match=str(bad)):
            await kube.connect(str(bad))

    run(main())
