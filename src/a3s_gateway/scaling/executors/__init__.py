"""Scale executors (SPEC §8.5)."""

from __future__ import annotations

from typing import Protocol


class ExecutorError(Exception):
    """A scale or endpoint call failed (logged, counted in gateway_executor_errors_total, retried at the next tick)."""


class EndpointSink(Protocol):
    def set_endpoints(self, urls: list[str], replicas: int | None = None) -> None:
        """The full current list of replica URLs reported by the executor; ``replicas``: how many replicas they
        serve for when that is not one per URL (the static servers standing in for Box's replicas)."""
