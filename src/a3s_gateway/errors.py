"""Exception tree of a3s-gateway.

Every exception the gateway raises on purpose derives from :class:`GatewayError`.
"""

from __future__ import annotations

from dataclasses import dataclass


class GatewayError(Exception):
    """Base class of every a3s-gateway error."""


class ProtocolError(GatewayError):
    """A peer broke the protocol; ``status`` is the HTTP status to answer (``h11`` style status hint)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

    def __repr__(self) -> str:
        return f"ProtocolError({self.status}, {self.message!r})"


@dataclass(frozen=True)
class Issue:
    """One configuration diagnostic (SPEC §2.6)."""

    file: str
    line: int
    col: int
    path: str
    severity: str  # "error" | "warning"
    message: str
    hint: str | None = None

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.col}" if self.line else f"{self.file}"
        text = f"{where}: {self.severity}: {self.path + ': ' if self.path else ''}{self.message}"
        if self.hint:
            text += "\n    help: " + self.hint.replace("\n", "\n    ")
        return text


class ConfigError(GatewayError):
    """An invalid configuration; ``issues`` holds every diagnostic, sorted by file, line, column."""

    def __init__(self, issues: list[Issue]) -> None:
        self.issues = sorted(issues, key=lambda i: (i.file, i.line, i.col))
        super().__init__("\n".join(str(i) for i in self.issues))


class StartupError(GatewayError):
    """A valid configuration could not be started (bind error, unsupported feature, ...)."""
