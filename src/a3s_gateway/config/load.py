"""Loading (SPEC §2): ``load_file`` / ``load_text`` / ``load_dict`` parse the main and directory files, decode each
block with its schema, run :mod:`a3s_gateway.config.references` and return the frozen ``GatewayConfig``; every
diagnostic is collected and any error raises one ``ConfigError``."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

from a3s_gateway.config.hcl import Body, Entry, ListNode, Node, Pos, Scalar, Unsupported, from_python, parse
from a3s_gateway.config.model import (
    AdminConfig,
    EntrypointConfig,
    GatewayConfig,
    MiddlewareConfig,
    ProvidersConfig,
    RouterConfig,
    ServiceConfig,
)
from a3s_gateway.config.references import check_references
from a3s_gateway.config.schema.checks import NAME_RE, NAME_SHOWN
from a3s_gateway.config.schema.engine import SKIP, Ctx, build, decode, loc, quote, suggest
from a3s_gateway.config.schema.entrypoints import ENTRYPOINT
from a3s_gateway.config.schema.middlewares import decode_middleware
from a3s_gateway.config.schema.routers import ROUTER
from a3s_gateway.config.schema.services import SERVICE
from a3s_gateway.config.schema.top import ALIASES, LABELLED, TOP, TOP_KEYS
from a3s_gateway.errors import ConfigError

__all__ = ["current_sources", "directory_files", "load_dict", "load_file", "load_text", "source_digest"]


# --- interpolation / expression diagnostics (located at the attribute that uses them) ---------------------------


def _report_expressions(body: Body, ctx: Ctx, path: str, top: bool = False) -> None:
    for entry in body.entries:
        key = ALIASES.get(entry.key, entry.key) if top else entry.key
        sub = f"{path}.{key}" if path else key
        if entry.is_block:
            for label, _ in entry.labels or ():
                sub += f".{label}"
        _report_value(entry.value, ctx, sub, entry.pos)


def _report_value(node: Node, ctx: Ctx, path: str, at: Pos) -> None:
    if isinstance(node, Scalar):
        for message, hint in node.problems:
            ctx.error(at, path, message, hint)
    elif isinstance(node, Unsupported):
        ctx.error(at, path, f"unsupported expression {quote(node.text)}: only literal values are allowed")
    elif isinstance(node, ListNode):
        for i, item in enumerate(node.items):
            _report_value(item, ctx, f"{path}[{i}]", at)
    else:
        _report_expressions(node, ctx, path)


# --- loading ----------------------------------------------------------------------------------------------------


@dataclass
class _Item:
    """One labelled top-level block, waiting for the whole configuration to be collected."""

    kind: str
    name: str
    pos: Pos
    body: Body


@dataclass
class _Collected:
    items: dict[str, dict[str, _Item]] = field(default_factory=lambda: {k: {} for k in LABELLED})
    singletons: list[Entry] = field(default_factory=list)


def _collect(body: Body, ctx: Ctx, out: _Collected, main: bool) -> None:
    """Sort one file's top-level entries into labelled items and singletons; names are checked here."""
    _report_expressions(body, ctx, "", top=True)
    for entry in body.entries:
        key = ALIASES.get(entry.key, entry.key)
        if key in LABELLED:
            if not entry.is_block:
                ctx.error(entry.pos, key, f'{key} must be a block with a name: {key} "<name>" {{ ... }}')
                continue
            labels = entry.labels or []
            if len(labels) != 1:
                ctx.error(entry.pos, key, f"{key} block needs exactly one label (its name), got {len(labels)}")
                continue
            name, label_pos = labels[0]
            path = f"{key}.{name}"
            if not NAME_RE.match(name):
                ctx.error(label_pos, path, f"invalid name {quote(name)}; names match {NAME_SHOWN}")
                continue
            previous = out.items[key].get(name)
            if previous is not None:
                ctx.error(entry.pos, path, f'duplicate {key} "{name}" (also defined at {loc(previous.pos)})')
                continue
            assert isinstance(entry.value, Body)
            out.items[key][name] = _Item(key, name, entry.pos, entry.value)
            ctx.locations[path] = entry.pos
        elif key in TOP.keys or key in TOP.legacy:
            if not main:
                ctx.error(entry.pos, key, f'"{key}" is allowed only in the main configuration file')
                continue
            out.singletons.append(replace(entry, key=key))
        else:
            close = suggest(entry.key, TOP_KEYS)
            hint = f' (did you mean "{close}"?)' if close else ""
            ctx.error(entry.pos, entry.key, f'unknown key "{entry.key}"{hint}')


def _directory_files(ctx: Ctx, providers: ProvidersConfig) -> list[str]:
    """The ``*.hcl`` files of ``providers.file.directory`` in byte-wise name order (§2.5)."""
    if providers.file is None or not providers.file.directory:
        return []
    directory = providers.file.directory
    where = "providers.file.directory"
    if not ctx.ok(where):
        return []
    try:
        return directory_files(directory)
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the path
        ctx.error(ctx.at(where), where, f"cannot read {quote(directory)}: {getattr(exc, 'strerror', None) or exc}")
        return []


def directory_files(directory: str) -> list[str]:
    """The configuration files of ``directory`` (§2.5): ``*.hcl`` not starting with ``.``, in byte-wise name order;
    raises OSError when the directory cannot be listed."""
    files = []
    for name in sorted(os.listdir(directory), key=lambda n: n.encode("utf-8", "surrogateescape")):
        full = os.path.join(directory, name)
        if name.startswith(".") or not name.endswith(".hcl") or not os.path.isfile(full):
            continue
        files.append(full)
    return files


def source_digest(text: str) -> str:
    """What ``GatewayConfig.sources`` records of one file's text (its SHA-256)."""
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()


def current_sources(main: str, directory: str) -> dict[str, str]:
    """What loading ``main`` with ``providers.file.directory = directory`` would read now, as path -> digest (the
    shape of ``GatewayConfig.sources``); a file that cannot be read, or a directory that cannot be listed, is ``""``."""
    paths = [main]
    sources: dict[str, str] = {}
    if directory:
        try:
            paths.extend(directory_files(directory))
        except (OSError, ValueError):
            sources[directory] = ""
    for path in paths:
        try:
            with open(path, encoding="utf-8") as f:
                sources[path] = source_digest(f.read())
        except (OSError, ValueError):  # UnicodeDecodeError is a ValueError; so is a NUL in the path
            sources[path] = ""
    return sources


def _read(path: str, ctx: Ctx, at: Pos | None) -> str | None:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except UnicodeDecodeError as exc:
        ctx.error(Pos(path, 1, 1), "", f"cannot read {quote(path)}: not UTF-8 ({exc.reason} at byte {exc.start})")
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the path
        where = at or Pos(path, 0, 0)
        ctx.error(where, "", f"cannot read {quote(path)}: {getattr(exc, 'strerror', None) or exc}")
    return None


def load_file(path: str, *, env: Mapping[str, str] | None = None) -> GatewayConfig:
    """``GatewayConfig.from_file``: the main file plus its directory files; raises ``ConfigError``."""
    ctx = Ctx(os.environ if env is None else env)
    text = _read(path, ctx, None)
    if text is None:
        raise ConfigError(ctx.issues)
    return _load(ctx, text, path, load_directory=True)


def load_text(text: str, filename: str = "<string>", *, env: Mapping[str, str] | None = None) -> GatewayConfig:
    """``GatewayConfig.from_hcl``."""
    ctx = Ctx(os.environ if env is None else env)
    return _load(ctx, text, filename, load_directory=True, is_file=False)


def load_dict(data: Mapping[str, Any]) -> GatewayConfig:
    """``GatewayConfig.from_dict``: JSON-shaped data, diagnostics prefixed ``<dict>``."""
    ctx = Ctx(os.environ)
    if not isinstance(data, Mapping):
        ctx.error(Pos("<dict>", 0, 0), "", f"expected an object, got {type(data).__name__}")
        raise ConfigError(ctx.issues)
    body = from_python(data, "<dict>", frozenset(LABELLED) | frozenset(ALIASES))
    return _assemble(ctx, [body], "<dict>", main_path=None, load_directory=False)


def _load(ctx: Ctx, text: str, filename: str, *, load_directory: bool, is_file: bool = True) -> GatewayConfig:
    body, issues = parse(text, filename, ctx.env)
    ctx.issues.extend(issues)
    sources = {filename: source_digest(text)} if is_file else {}
    return _assemble(ctx, [body], filename, main_path=filename if is_file else None, load_directory=load_directory,
                     sources=sources)


def _assemble(
    ctx: Ctx, bodies: list[Body | None], main_name: str, *, main_path: str | None, load_directory: bool,
    sources: dict[str, str] | None = None,
) -> GatewayConfig:
    sources = {} if sources is None else sources
    collected = _Collected()
    files = [main_name]
    main = bodies[0]
    if main is not None:
        _collect(main, ctx, collected, main=True)
    top = decode(Body(collected.singletons, Pos(main_name, 1, 1)), TOP, ctx, "")
    values = top.values
    for key in ("providers", "admin", "access_log", "tracing", "workers", "shutdown_timeout"):
        if values.get(key) is SKIP:
            values[key] = TOP.keys[key].default
    if top.has("workers") and (values["workers"] == "auto" or values["workers"] > 1):
        ctx.explicit.add("workers")
    providers: ProvidersConfig = values["providers"]
    extra_files = _directory_files(ctx, providers)
    if load_directory:
        for path in extra_files:
            text = _read(path, ctx, None)
            if text is None:
                continue
            files.append(path)
            sources[path] = source_digest(text)
            body, issues = parse(text, path, ctx.env)
            ctx.issues.extend(issues)
            if body is not None:
                _collect(body, ctx, collected, main=False)
    config = _build_all(ctx, collected, values, main_path, tuple(files))
    if ctx.errors:
        raise ConfigError(ctx.issues)
    return replace(config, sources=MappingProxyType(sources)) if sources else config


# --- the whole configuration ------------------------------------------------------------------------------------


def _build_all(
    ctx: Ctx, collected: _Collected, values: dict[str, Any], main_path: str | None, files: tuple[str, ...]
) -> GatewayConfig:
    entrypoints: dict[str, EntrypointConfig] = {}
    for name, item in collected.items["entrypoints"].items():
        ep = build(ENTRYPOINT, decode(item.body, ENTRYPOINT, ctx, f"entrypoints.{name}", item.pos), ctx)
        entrypoints[name] = ep
    middlewares: dict[str, MiddlewareConfig] = {}
    for name, item in collected.items["middlewares"].items():
        mw = decode_middleware(item.body, ctx, f"middlewares.{name}", item.pos)
        if mw is not None:
            middlewares[name] = mw
    known_middlewares = set(collected.items["middlewares"])
    services: dict[str, ServiceConfig] = {}
    for name, item in collected.items["services"].items():
        services[name] = build(SERVICE, decode(item.body, SERVICE, ctx, f"services.{name}", item.pos), ctx)
    routers: dict[str, RouterConfig] = {}
    for name, item in collected.items["routers"].items():
        routers[name] = build(ROUTER, decode(item.body, ROUTER, ctx, f"routers.{name}", item.pos), ctx)
    admin: AdminConfig = values["admin"]
    providers: ProvidersConfig = values["providers"]

    routers, services = check_references(
        ctx, entrypoints, routers, services, middlewares, known_middlewares, admin, providers
    )

    used_types = {middlewares[m].type for r in routers.values() for m in r.middlewares if m in middlewares}
    used_types |= {middlewares[m].type for m in admin.middlewares if m in middlewares}
    ctx.explicit.update(f"middleware {t}" for t in used_types)
    if admin.middlewares:
        ctx.explicit.add("admin.middlewares")

    locations = MappingProxyType({k: (p.file, p.line, p.col) for k, p in ctx.locations.items()})
    return GatewayConfig(
        entrypoints=entrypoints,
        routers=routers,
        services=services,
        middlewares=middlewares,
        providers=providers,
        admin=admin,
        access_log=values["access_log"],
        tracing=values["tracing"],
        workers=values["workers"],
        shutdown_timeout=values["shutdown_timeout"],
        warnings=sorted((i for i in ctx.issues if i.severity == "warning"), key=lambda i: (i.file, i.line, i.col)),
        path=main_path,
        files=files,
        explicit=frozenset(ctx.explicit),
        locations=locations,
    )
