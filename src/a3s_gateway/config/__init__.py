"""Configuration: HCL loading (SPEC §2), the model (§3) and validation (§2.6); `validate` output (§2.7).

The package: ``hcl`` (text → positioned tree), ``model`` (frozen dataclasses, the leaf), ``schema/`` (the schema
engine and one module per block family), ``references`` (checks across blocks), ``load`` and ``export``, and
``compile`` (model → Runtime). Importing the package installs ``load`` and ``export`` behind ``GatewayConfig``'s
``from_*`` / ``to_dict`` (:func:`a3s_gateway.config.model.install`), so ``model`` imports neither.
"""

from __future__ import annotations

from collections.abc import Mapping

from a3s_gateway.config import export, load, model
from a3s_gateway.config.load import load_dict, load_file, load_text
from a3s_gateway.config.model import GatewayConfig
from a3s_gateway.config.schema.middlewares import MIDDLEWARE_TYPES
from a3s_gateway.errors import ConfigError, Issue

model.install(load, export)

__all__ = [
    "MIDDLEWARE_TYPES",
    "ConfigError",
    "GatewayConfig",
    "Issue",
    "format_validate_report",
    "load_dict",
    "load_file",
    "load_text",
]


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def format_validate_report(path: str, result: GatewayConfig | ConfigError, *, strict: bool = False) -> tuple[str, int]:
    """The output of ``a3s-gateway validate`` (SPEC §2.7) and its exit code.

    ``result`` is a loaded configuration or the ``ConfigError`` raised while loading it. With ``strict``
    warnings count as errors. The text ends with a newline.
    """
    if isinstance(result, ConfigError):
        issues = list(result.issues)
    else:
        issues = list(result.warnings)
    if strict:
        issues = [
            Issue(i.file, i.line, i.col, i.path, "error", i.message, i.hint) if i.severity == "warning" else i
            for i in issues
        ]
    issues.sort(key=lambda i: (i.file, i.line, i.col))
    errors = sum(1 for i in issues if i.severity == "error")
    warnings = len(issues) - errors
    lines = [str(i) for i in issues]
    if errors == 0 and isinstance(result, GatewayConfig):
        lines.append(f"✓ {path}: configuration is valid ({result.summary()})")
        return "\n".join(lines) + "\n", 0
    lines.append(f"✗ {path}: {_plural(errors, 'error')}, {_plural(warnings, 'warning')}")
    return "\n".join(lines) + "\n", 1


def validate_file(path: str, *, strict: bool = False, env: Mapping[str, str] | None = None) -> tuple[str, int]:
    """Load ``path`` and return the ``validate`` report and exit code (no network is contacted)."""
    try:
        config: GatewayConfig | ConfigError = load_file(path, env=env)
    except ConfigError as exc:
        config = exc
    return format_validate_report(path, config, strict=strict)


__all__ += ["validate_file"]
