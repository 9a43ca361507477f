"""The ``static`` executor (SPEC §8.5): the replicas are the target's ``servers``; nothing is started or stopped.

The autoscaler still computes ``desired`` (exported) and the cold-start buffer holds requests until a server passes
its readiness probe (a model that is still loading, say).
"""

from __future__ import annotations


class StaticExecutor:
    kind = "static"

    def __init__(self, urls: list[str]) -> None:
        self.urls = list(urls)

    async def scale(self, desired: int, current: int, reason: str) -> int:
        return len(self.urls)

    async def close(self) -> None:
        return None
