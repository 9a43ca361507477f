"""The deployment files agree with each other and with the code: Dockerfile, Helm chart, GitHub workflows.

No Docker engine, helm binary or cluster is needed. The chart is rendered by a small interpreter of the Go-template
subset its templates use (if / else if / else / with / define / include, variables, and the few Sprig functions in
``FUNCTIONS``) and the output is parsed as YAML, so a template that would not render, or would render to something
else than the Dockerfile and the gateway expect, fails here. A template using anything outside that subset fails
too: extend the interpreter (or keep the template simple).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import posixpath
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib
import yaml

import a3s_gateway
from a3s_gateway.cli import _parser as cli_parser
from a3s_gateway.config import GatewayConfig
from a3s_gateway.cpus import available_cpus
from a3s_gateway.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "a3s-gateway"
TEMPLATES = CHART / "templates"
WORKFLOWS = ROOT / ".github" / "workflows"

CONFIG_FILE = "/etc/a3s-gateway/gateway.hcl"
HEALTH_PATH = "/api/gateway/health"
METRICS_PATH = "/metrics"
RELEASE = {"Name": "gateway", "Namespace": "default", "Service": "Helm"}


# ----------------------------------------------------------------------------------------------------------------
# A Go-template interpreter for the subset the chart uses
# ----------------------------------------------------------------------------------------------------------------

_ACTION = re.compile(r"\{\{(-?)(\s*)(.*?)(\s*)(-?)\}\}", re.S)
_TOKEN = re.compile(
    r"""\s*(?:
      (?P<str>"(?:\\.|[^"\\])*")
    | (?P<num>-?\d+)
    | (?P<assign>:=)
    | (?P<pipe>\|)
    | (?P<lp>\()
    | (?P<rp>\))
    | (?P<var>\$\w*(?:\.\w+)*)
    | (?P<field>(?:\.\w+)+|\.)
    | (?P<ident>[A-Za-z_]\w*)
    )""",
    re.X,
)
_OPENERS = ("if", "with", "range", "define", "block")


class TemplateError(Exception):
    pass


def _truthy(value: Any) -> bool:
    """Go template truth: false, 0, nil and empty strings, lists and maps are false."""
    return bool(value)


def _go_str(value: Any) -> str:
    """How a value prints (Helm shows nil as nothing)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (str, int, float)):
        return str(value)
    raise TemplateError(f"printing a {type(value).__name__} ({value!r}): use toYaml")


def _to_yaml(value: Any) -> str:
    if not isinstance(value, (dict, list)):
        raise TemplateError(f"toYaml of a scalar ({value!r}) is not used by the chart")
    return yaml.safe_dump(value, default_flow_style=False, sort_keys=True, allow_unicode=True).rstrip("\n")


def _indent(width: int, text: str) -> str:
    pad = " " * width
    return pad + text.replace("\n", "\n" + pad)


def _printf(fmt: str, *args: Any) -> str:
    queue = list(args)

    def verb(m: re.Match[str]) -> str:
        if m.group(0) == "%%":
            return "%"
        if not queue:
            raise TemplateError(f"printf {fmt!r}: too few arguments")
        return _go_str(queue.pop(0))

    return re.sub(r"%%|%[-+# 0]*\d*[svd]", verb, fmt)


def _default(fallback: Any, *given: Any) -> Any:
    return given[0] if given and _truthy(given[0]) else fallback


def _and(*args: Any) -> Any:
    for a in args:
        if not _truthy(a):
            return a
    return args[-1]


def _or(*args: Any) -> Any:
    for a in args:
        if _truthy(a):
            return a
    return args[-1]


FUNCTIONS: dict[str, Callable[..., Any]] = {
    "toYaml": _to_yaml,
    "nindent": lambda width, text: "\n" + _indent(width, text),
    "indent": _indent,
    "quote": lambda *xs: " ".join(json.dumps(_go_str(x), ensure_ascii=False) for x in xs if x is not None),
    "default": _default,
    "trunc": lambda n, s: s[:n] if n >= 0 else s[n:],
    "trimSuffix": lambda suffix, s: s[: -len(suffix)] if suffix and s.endswith(suffix) else s,
    "printf": _printf,
    "replace": lambda old, new, s: s.replace(old, new),
    "contains": lambda sub, s: sub in s,
    "sha256sum": lambda s: hashlib.sha256(s.encode()).hexdigest(),
    "not": lambda x: not _truthy(x),
    "and": _and,
    "or": _or,
    "eq": lambda a, *bs: any(a == b for b in bs),
    "ne": lambda a, b: a != b,
    "include": None,  # needs the defines: handled by the renderer
    "regexMatch": lambda pattern, s: re.search(pattern, s) is not None,  # RE2 and re agree on the chart's patterns
    "fail": lambda message: _fail(message),
}


class TemplateFailed(TemplateError):
    """``fail`` was called: helm template stops with this message."""


def _fail(message: str) -> None:
    raise TemplateFailed(message)


@dataclass
class _Pipeline:
    """``[$var :=] command | command ...``; a command is a list of operands ("str"/"num"/"field"/"var"/"ident"/
    "pipe" for a parenthesised pipeline)."""

    commands: list[list[tuple[str, Any]]]
    declare: str | None = None


def _parse_pipeline(text: str) -> _Pipeline:
    tokens: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            if text[pos:].strip() == "":
                break
            raise TemplateError(f"cannot read {text[pos:]!r} in {{{{ {text} }}}}")
        kind = m.lastgroup
        assert kind is not None
        tokens.append((kind, m.group(kind)))
        pos = m.end()
    declare = None
    if len(tokens) >= 2 and tokens[0][0] == "var" and tokens[1][0] == "assign":
        declare, tokens = tokens[0][1], tokens[2:]
    pipeline, rest = _parse_commands(tokens, text)
    if rest:
        raise TemplateError(f"unbalanced ')' in {{{{ {text} }}}}")
    pipeline.declare = declare
    return pipeline


def _parse_commands(tokens: list[tuple[str, str]], text: str) -> tuple[_Pipeline, list[tuple[str, str]]]:
    commands: list[list[tuple[str, Any]]] = [[]]
    while tokens:
        kind, value = tokens[0]
        tokens = tokens[1:]
        if kind == "rp":
            return _Pipeline(commands), [(kind, value), *tokens]
        if kind == "pipe":
            commands.append([])
        elif kind == "lp":
            inner, tokens = _parse_commands(tokens, text)
            if not tokens or tokens[0][0] != "rp":
                raise TemplateError(f"missing ')' in {{{{ {text} }}}}")
            tokens = tokens[1:]
            commands[-1].append(("pipe", inner))
        elif kind == "ident":
            if value not in FUNCTIONS and value not in ("true", "false", "nil"):
                raise TemplateError(f"function {value!r} is not in the supported subset ({{{{ {text} }}}})")
            commands[-1].append((kind, value))
        elif kind == "assign":
            raise TemplateError(f"misplaced := in {{{{ {text} }}}}")
        else:
            commands[-1].append((kind, value))
    if any(not c for c in commands):
        raise TemplateError(f"empty command in {{{{ {text} }}}}")
    return _Pipeline(commands), []


@dataclass
class _Node:
    kind: str  # text | output | if | with
    text: str = ""
    pipeline: _Pipeline | None = None
    branches: list[tuple[_Pipeline, list[_Node]]] = field(default_factory=list)
    otherwise: list[_Node] = field(default_factory=list)


def _lex(source: str) -> list[tuple[str, str]]:
    """("text", s) and ("action", body) items, with the {{- and -}} whitespace trimming applied."""
    items: list[tuple[str, str]] = []
    pos = 0
    trim_next = False
    for m in _ACTION.finditer(source):
        text = source[pos : m.start()]
        if trim_next:
            text = text.lstrip()
        if m.group(1) == "-" and m.group(2):
            text = text.rstrip()
        elif m.group(1) == "-":
            raise TemplateError(f"'{{{{-' needs a space after it: {m.group(0)!r}")
        items.append(("text", text))
        items.append(("action", m.group(3)))
        trim_next = m.group(5) == "-" and bool(m.group(4))
        pos = m.end()
    tail = source[pos:]
    items.append(("text", tail.lstrip() if trim_next else tail))
    return items


def _parse(items: list[tuple[str, str]], defines: dict[str, list[_Node]], where: str) -> list[_Node]:
    position = 0

    def block(stops: frozenset[str]) -> tuple[list[_Node], str]:
        """Nodes up to the action ending the block (returned: "end", "else ..."), or the end of the file."""
        nonlocal position
        nodes: list[_Node] = []
        while position < len(items):
            kind, body = items[position]
            position += 1
            if kind == "text":
                if body:
                    nodes.append(_Node("text", text=body))
                continue
            if body.startswith("/*"):
                if not body.endswith("*/"):
                    raise TemplateError(f"{where}: unterminated comment")
                continue
            word = body.split(None, 1)[0] if body else ""
            rest = body[len(word) :].strip()
            if word in ("end", "else"):
                if word not in stops:
                    raise TemplateError(f"{where}: unexpected {{{{ {body} }}}}")
                return nodes, body
            if word in ("if", "with"):
                branches: list[tuple[_Pipeline, list[_Node]]] = []
                otherwise: list[_Node] = []
                condition = _parse_pipeline(rest)
                while True:
                    branch, ending = block(frozenset({"end", "else"}))
                    branches.append((condition, branch))
                    if ending == "end":
                        break
                    after_else = ending[len("else") :].strip()
                    if word == "if" and after_else.startswith("if "):
                        condition = _parse_pipeline(after_else[3:])
                        continue
                    if after_else:
                        raise TemplateError(f"{where}: {{{{ {ending} }}}} is not in the supported subset")
                    otherwise, _ = block(frozenset({"end"}))
                    break
                nodes.append(_Node(word, branches=branches, otherwise=otherwise))
            elif word == "define":
                name = json.loads(rest)
                defines[name], _ = block(frozenset({"end"}))
            elif word in ("range", "block", "template"):
                raise TemplateError(f"{where}: {{{{ {word} }}}} is not in the supported subset")
            else:
                nodes.append(_Node("output", pipeline=_parse_pipeline(body)))
        if stops:
            raise TemplateError(f"{where}: missing {{{{ end }}}}")
        return nodes, ""

    nodes, _ = block(frozenset())
    return nodes


class _Renderer:
    def __init__(self, defines: dict[str, list[_Node]]) -> None:
        self.defines = defines

    def render(self, nodes: list[_Node], dot: Any, variables: dict[str, Any]) -> str:
        out: list[str] = []
        scope = dict(variables)
        for node in nodes:
            if node.kind == "text":
                out.append(node.text)
            elif node.kind == "output":
                assert node.pipeline is not None
                value = self.pipeline(node.pipeline, dot, scope)
                if node.pipeline.declare:
                    scope[node.pipeline.declare] = value
                else:
                    out.append(_go_str(value))
            elif node.kind == "if":
                for cond, body in node.branches:
                    if _truthy(self.pipeline(cond, dot, scope)):
                        out.append(self.render(body, dot, scope))
                        break
                else:
                    out.append(self.render(node.otherwise, dot, scope))
            elif node.kind == "with":
                ((cond, body),) = node.branches
                value = self.pipeline(cond, dot, scope)
                if _truthy(value):
                    out.append(self.render(body, value, scope))
                else:
                    out.append(self.render(node.otherwise, dot, scope))
        return "".join(out)

    def pipeline(self, p: _Pipeline, dot: Any, scope: dict[str, Any]) -> Any:
        value: Any = None
        for i, command in enumerate(p.commands):
            piped = [value] if i > 0 else []
            value = self.command(command, piped, dot, scope)
        return value

    def command(self, command: list[tuple[str, Any]], piped: list[Any], dot: Any, scope: dict[str, Any]) -> Any:
        kind, head = command[0]
        if kind == "ident" and head not in ("true", "false", "nil"):
            args = [self.operand(op, dot, scope) for op in command[1:]] + piped
            if head == "include":
                name, context = args
                if name not in self.defines:
                    raise TemplateError(f"include of undefined template {name!r}")
                return self.render(self.defines[name], context, {"$": context})
            return FUNCTIONS[head](*args)
        if len(command) > 1 or piped:
            raise TemplateError(f"{head!r} is not a function and takes no arguments")
        return self.operand(command[0], dot, scope)

    def operand(self, op: tuple[str, Any], dot: Any, scope: dict[str, Any]) -> Any:
        kind, value = op
        if kind == "str":
            return json.loads(value)
        if kind == "num":
            return int(value)
        if kind == "ident":
            return {"true": True, "false": False, "nil": None}[value]
        if kind == "pipe":
            return self.pipeline(value, dot, scope)
        if kind == "field":
            return _lookup(dot, value)
        if kind == "var":
            name, _, path = value.partition(".")
            if name not in scope:
                raise TemplateError(f"undefined variable {name}")
            return _lookup(scope[name], "." + path) if path else scope[name]
        raise TemplateError(f"unexpected operand {op!r}")


def _lookup(value: Any, path: str) -> Any:
    """``.a.b`` of ``value``; a key missing from a map is an error here (the chart must name existing values)."""
    for key in [k for k in path.split(".") if k]:
        if not isinstance(value, dict) or key not in value:
            raise TemplateError(f"no value at {path!r} (missing {key!r})")
        value = value[key]
    return value


def _merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


@cache
def _parsed_templates() -> tuple[dict[str, list[_Node]], dict[str, list[_Node]]]:
    """({file name: nodes}, {define name: nodes}) of every file under templates/."""
    defines: dict[str, list[_Node]] = {}
    parsed = {path.name: _parse(_lex(path.read_text()), defines, path.name) for path in sorted(TEMPLATES.iterdir())}
    return parsed, defines


def render_chart(overrides: dict[str, Any] | None = None) -> dict[str, str]:
    """{template file name: rendered text} with values.yaml + ``overrides``, like ``helm template``."""
    parsed, defines = _parsed_templates()
    chart = chart_yaml()
    root = {
        "Values": _merge(values_yaml(), overrides or {}),
        "Chart": {"Name": chart["name"], "Version": chart["version"], "AppVersion": chart["appVersion"]},
        "Release": dict(RELEASE),
    }
    renderer = _Renderer(defines)
    return {
        name: renderer.render(nodes, root, {"$": root}) for name, nodes in parsed.items() if not name.startswith("_")
    }


def manifests(rendered: dict[str, str]) -> list[dict[str, Any]]:
    docs = []
    for name, text in rendered.items():
        if not name.endswith((".yaml", ".yml")):
            continue
        try:
            loaded = list(yaml.safe_load_all(text))
        except yaml.YAMLError as e:
            pytest.fail(f"{name} does not render to YAML: {e}\n--- rendered ---\n{text}")
        docs.extend(d for d in loaded if d is not None)
    return docs


def the(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, rendered {len(found)}"
    return found[0]


# ----------------------------------------------------------------------------------------------------------------
# The files
# ----------------------------------------------------------------------------------------------------------------


@cache
def _values_text() -> str:
    return (CHART / "values.yaml").read_text()


def values_yaml() -> dict[str, Any]:
    return copy.deepcopy(yaml.safe_load(_values_text()))


@cache
def chart_yaml() -> dict[str, Any]:
    return yaml.safe_load((CHART / "Chart.yaml").read_text())


def rendered_config(overrides: dict[str, Any] | None = None) -> str:
    """The gateway.hcl of the rendered ConfigMap."""
    return str(the(manifests(render_chart(overrides)), "ConfigMap")["data"][posixpath.basename(CONFIG_FILE)])


def load_config(text: str) -> GatewayConfig:
    try:
        return GatewayConfig.from_hcl(text, "configmap:gateway.hcl", env={})
    except ConfigError as e:
        pytest.fail("the chart's config is invalid:\n" + "\n".join(str(i) for i in e.issues) + "\n---\n" + text)


@cache
def default_config() -> GatewayConfig:
    return load_config(rendered_config())


@dataclass
class Instruction:
    keyword: str
    args: str


@dataclass
class Stage:
    base: str
    name: str
    instructions: list[Instruction]

    def all(self, keyword: str) -> list[str]:
        return [i.args for i in self.instructions if i.keyword == keyword]


@cache
def dockerfile() -> tuple[Stage, ...]:
    """The Dockerfile's stages (comments dropped, continuation lines joined)."""
    lines: list[str] = []
    pending = ""
    for raw in (ROOT / "Dockerfile").read_text().splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or not stripped:
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        lines.append(pending + stripped)
        pending = ""
    stages: list[Stage] = []
    for line in lines:
        keyword, _, args = line.partition(" ")
        keyword, args = keyword.upper(), args.strip()
        if keyword == "FROM":
            m = re.fullmatch(r"(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?", args, re.I)
            assert m, f"cannot read FROM {args}"
            stages.append(Stage(m.group(1), m.group(2) or "", []))
        elif stages:
            stages[-1].instructions.append(Instruction(keyword, args))
    return tuple(stages)


def dockerfile_env(stage: Stage) -> dict[str, str]:
    env: dict[str, str] = {}
    for args in stage.all("ENV"):
        for m in re.finditer(r'(\w+)=("[^"]*"|\S+)', args):
            env[m.group(1)] = m.group(2).strip('"')
    return env


@cache
def workflow(name: str) -> dict[str, Any]:
    loaded = yaml.safe_load((WORKFLOWS / name).read_text())
    assert isinstance(loaded, dict), f"{name} is not a mapping"
    return loaded


def triggers(wf: dict[str, Any]) -> dict[str, Any]:
    # YAML 1.1 reads the bare key `on` as the boolean true
    on = wf.get("on", wf.get(True))
    assert isinstance(on, dict), "on: must be a mapping"
    return on


def steps(job: dict[str, Any]) -> list[dict[str, Any]]:
    return list(job.get("steps", []))


def run_text(job: dict[str, Any]) -> str:
    return "\n".join(str(s.get("run", "")) for s in steps(job))


def uses(job: dict[str, Any], action: str) -> list[dict[str, Any]]:
    return [s for s in steps(job) if str(s.get("uses", "")).startswith(action + "@")]


def templates_text() -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(TEMPLATES.iterdir())}


def container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    containers = the(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def arg_after(args: list[str], flag: str) -> str:
    assert args.count(flag) == 1, f"{flag} must be passed once: {args}"
    return args[args.index(flag) + 1]


def port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


# ----------------------------------------------------------------------------------------------------------------
# Helm chart: structure
# ----------------------------------------------------------------------------------------------------------------


def test_chart_metadata_matches_the_package() -> None:
    chart = chart_yaml()
    assert chart["apiVersion"] == "v2"
    assert chart["name"] == CHART.name == "a3s-gateway"
    assert chart["type"] == "application"
    assert re.fullmatch(r"\d+\.\d+\.\d+(?:[-+].+)?", str(chart["version"])), chart["version"]
    assert chart["appVersion"] == a3s_gateway.__version__, "Chart.yaml appVersion must be a3s_gateway.__version__"


def test_every_values_path_the_templates_read_exists() -> None:
    values = values_yaml()
    missing = []
    for name, text in templates_text().items():
        for m in re.finditer(r"\.Values((?:\.[A-Za-z_]\w*)+)", text):
            try:
                _lookup(values, m.group(1))
            except TemplateError:
                missing.append(f"{name}: .Values{m.group(1)}")
    assert not missing, "not in values.yaml: " + ", ".join(sorted(set(missing)))


def test_template_blocks_balance_and_includes_are_defined() -> None:
    texts = templates_text()
    defined = set(re.findall(r'\{\{-?\s*define\s+"([^"]+)"', texts["_helpers.tpl"]))
    assert {"a3s-gateway.name", "a3s-gateway.fullname", "a3s-gateway.labels", "a3s-gateway.selectorLabels"} <= defined
    for name, text in texts.items():
        depth = 0
        for m in _ACTION.finditer(text):
            word = (m.group(3).split(None, 1) or [""])[0]
            if word in _OPENERS:
                depth += 1
            elif word == "end":
                depth -= 1
                assert depth >= 0, f"{name}: {{{{ end }}}} without an opening block at offset {m.start()}"
            elif word == "else":
                assert depth > 0, f"{name}: else outside a block"
        assert depth == 0, f"{name}: {depth} block(s) not closed by {{{{ end }}}}"
        for used in re.findall(r'include\s+"([^"]+)"', text):
            assert used in defined, f"{name} includes {used!r}, which _helpers.tpl does not define"


def test_no_values_read_through_a_rebound_dot() -> None:
    """Inside `with` the dot is the value: `.Values` or `include "x" .` there would be the classic Helm bug."""
    for name, text in templates_text().items():
        stack: list[str] = []
        for m in _ACTION.finditer(text):
            body = m.group(3)
            word = (body.split(None, 1) or [""])[0]
            if "with" in stack or "range" in stack:
                assert not re.search(r"(?<![\w$])\.Values\b", body), f"{name}: .Values inside with: {{{{ {body} }}}}"
                assert not re.search(r'include\s+"[^"]+"\s+\.(?:\s|\)|$)', body), f"{name}: {{{{ {body} }}}}"
            if word in _OPENERS:
                stack.append(word)
            elif word == "end":
                stack.pop()


# ----------------------------------------------------------------------------------------------------------------
# Helm chart: rendered
# ----------------------------------------------------------------------------------------------------------------

EVERYTHING_ON: dict[str, Any] = {
    "autoscaling": {"enabled": True},
    "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
    "rollOnConfigChange": True,
    "image": {"tag": "9.9.9"},
    "imagePullSecrets": [{"name": "registry"}],
    "podAnnotations": {"example.com/team": "ai"},
    "podLabels": {"tier": "edge"},
    "workers": 4,
    "extraArgs": ["--listen", "0.0.0.0:8081"],
    "extraEnv": [{"name": "JWT_SECRET", "valueFrom": {"secretKeyRef": {"name": "gw", "key": "jwt"}}}],
    "envFrom": [{"secretRef": {"name": "gw-env"}}],
    "extraVolumes": [{"name": "certs", "secret": {"secretName": "gw-tls"}}],
    "extraVolumeMounts": [{"name": "certs", "mountPath": "/etc/a3s-gateway-tls", "readOnly": True}],
    "service": {"type": "LoadBalancer", "externalTrafficPolicy": "Local", "annotations": {"a": "b"}},
    "adminService": {"annotations": {"c": "d"}},
    "serviceAccount": {"annotations": {"e": "f"}, "automount": True},
    "nodeSelector": {"kubernetes.io/os": "linux"},
    "tolerations": [{"key": "gpu", "operator": "Exists"}],
    "affinity": {"podAntiAffinity": {}},
    "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "ScheduleAnyway"}],
    "priorityClassName": "high",
}
MINIMAL: dict[str, Any] = {
    "serviceAccount": {"create": False},
    "preStopSleepSeconds": 0,
    # null removes a default (an empty map would be merged into it, as helm does)
    "updateStrategy": None,
    "readinessProbe": None,
    "livenessProbe": None,
    "service": {"type": "NodePort", "externalTrafficPolicy": "Local"},
    "nameOverride": "gw",
}
LONG_NAME: dict[str, Any] = {"fullnameOverride": "a-very-long-release-name-" + "x" * 60}
SCENARIOS = {"defaults": {}, "everything-on": EVERYTHING_ON, "minimal": MINIMAL, "long-name": LONG_NAME}

DNS_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_chart_renders_to_kubernetes_objects(scenario: str) -> None:
    rendered = render_chart(SCENARIOS[scenario])
    docs = manifests(rendered)
    for doc in docs:
        assert {"apiVersion", "kind", "metadata"} <= doc.keys(), doc
        name = doc["metadata"]["name"]
        assert len(name) <= 63 and DNS_LABEL.fullmatch(name), f"{doc['kind']} name {name!r} is not a DNS label"
        for key, value in (doc["metadata"].get("labels") or {}).items():
            assert isinstance(value, str) and len(value) <= 63, f"label {key}={value!r}"
    kinds = sorted(d["kind"] for d in docs)
    expected = ["ConfigMap", "Deployment", "Service", "Service"]
    if scenario != "minimal":
        expected.append("ServiceAccount")
    if scenario == "everything-on":
        expected += ["HorizontalPodAutoscaler", "ServiceMonitor"]
    assert kinds == sorted(expected)
    assert rendered["NOTES.txt"].strip()
    assert "<no value>" not in "".join(rendered.values())


def test_default_objects() -> None:
    values = values_yaml()
    docs = manifests(render_chart())
    deployment = the(docs, "Deployment")
    assert deployment["spec"]["replicas"] == values["replicaCount"]
    assert "annotations" not in deployment["spec"]["template"]["metadata"], "no checksum: ConfigMap changes hot-reload"
    assert values["rollOnConfigChange"] is False
    assert container(docs)["image"] == f"{values['image']['repository']}:{chart_yaml()['appVersion']}"
    service = the(docs, "Service", the(docs, "Deployment")["metadata"]["name"])
    assert service["spec"]["type"] == values["service"]["type"] == "ClusterIP"
    assert "externalTrafficPolicy" not in service["spec"]
    assert values["autoscaling"]["enabled"] is False and values["serviceMonitor"]["enabled"] is False
    pod = deployment["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["serviceAccountName"] == the(docs, "ServiceAccount")["metadata"]["name"]


def test_everything_on() -> None:
    values = _merge(values_yaml(), EVERYTHING_ON)
    docs = manifests(render_chart(EVERYTHING_ON))
    deployment = the(docs, "Deployment")
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    hpa = the(docs, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                            "name": deployment["metadata"]["name"]}
    assert hpa["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"] == \
        values["autoscaling"]["targetCPUUtilizationPercentage"]
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["checksum/config"] == hashlib.sha256(rendered_config(EVERYTHING_ON).encode()).hexdigest()
    assert annotations["example.com/team"] == "ai"
    c = container(docs)
    assert c["image"].endswith(":9.9.9")
    assert c["args"][-2:] == ["--listen", "0.0.0.0:8081"], "extraArgs come last"
    assert arg_after(c["args"], "--workers") == "4"
    assert [e["name"] for e in c["env"]] == ["XDG_CACHE_HOME", "JWT_SECRET"]
    assert {m["name"] for m in c["volumeMounts"]} == {"config", "tmp", "certs"}
    service = the(docs, "Service", deployment["metadata"]["name"])
    assert service["spec"]["type"] == "LoadBalancer" and service["spec"]["externalTrafficPolicy"] == "Local"
    monitor = the(docs, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_minimal() -> None:
    docs = manifests(render_chart(MINIMAL))
    pod = the(docs, "Deployment")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "default"
    c = container(docs)
    assert "lifecycle" not in c, "preStopSleepSeconds: 0 turns the preStop wait off"
    assert c["readinessProbe"] == {"httpGet": {"path": HEALTH_PATH, "port": "admin"}}
    service = the(docs, "Service", the(docs, "Deployment")["metadata"]["name"])
    assert service["spec"]["type"] == "NodePort" and service["spec"]["externalTrafficPolicy"] == "Local"


def test_config_reaches_the_path_the_image_reads() -> None:
    values = values_yaml()
    docs = manifests(render_chart())
    configmap = the(docs, "ConfigMap")
    text = configmap["data"][posixpath.basename(CONFIG_FILE)]
    assert list(configmap["data"]) == [posixpath.basename(CONFIG_FILE)]
    assert text.startswith(values["config"]), "the chart appends the providers block to `config`, nothing else"
    c = container(docs)
    assert arg_after(c["args"], "--config") == CONFIG_FILE
    assert arg_after(json.loads(dockerfile()[-1].all("CMD")[-1]), "--config") == CONFIG_FILE
    pod = the(docs, "Deployment")["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if "configMap" in v)
    assert volume["configMap"]["name"] == configmap["metadata"]["name"]
    mounts = [m for m in c["volumeMounts"] if m["name"] == volume["name"]]
    assert len(mounts) == 1
    assert mounts[0]["mountPath"] == posixpath.dirname(CONFIG_FILE)
    assert "subPath" not in mounts[0], "a subPath mount never sees ConfigMap updates: no hot reload"


def test_probes_ports_and_services_line_up() -> None:
    values = values_yaml()
    docs = manifests(render_chart({"serviceMonitor": {"enabled": True}}))
    c = container(docs)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    admin_port = port_of(arg_after(c["args"], "--admin"))
    assert arg_after(c["args"], "--admin").startswith("0.0.0.0:"), "probes and Prometheus come from outside the pod"
    for probe in ("readinessProbe", "livenessProbe"):
        get = c[probe]["httpGet"]
        assert get["path"] == HEALTH_PATH
        assert ports[get["port"]] == admin_port, f"{probe} asks port {get['port']}, the admin API is on {admin_port}"
    # the HTTP port is where the default configuration's entrypoint listens
    entrypoint_ports = {e.port for e in default_config().entrypoints.values()}
    assert ports["http"] in entrypoint_ports
    assert ports == {"http": values["containerPorts"]["http"], "admin": values["containerPorts"]["admin"]}

    deployment = the(docs, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    services = [d for d in docs if d["kind"] == "Service"]
    for service in services:
        assert service["spec"]["selector"].items() <= pod_labels.items()
        for p in service["spec"]["ports"]:
            assert p["targetPort"] in ports, f"Service port {p['name']} targets unknown {p['targetPort']}"
    traffic = the(docs, "Service", deployment["metadata"]["name"])
    assert [(p["name"], p["port"], p["targetPort"]) for p in traffic["spec"]["ports"]] == \
        [("http", values["service"]["port"], "http")], "the traffic Service must not expose the admin API"

    monitor = the(docs, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    selected = [s for s in services
                if monitor["spec"]["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()]
    assert len(selected) == 1, "the ServiceMonitor must select the admin Service only"
    (admin,) = selected
    assert admin["spec"]["type"] == "ClusterIP"
    admin_ports = {p["name"]: p for p in admin["spec"]["ports"]}
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in admin_ports, f"ServiceMonitor port {endpoint['port']} is not a port of {admin_ports}"
    assert ports[admin_ports[endpoint["port"]]["targetPort"]] == admin_port
    assert endpoint["path"] == METRICS_PATH
    assert monitor["spec"]["namespaceSelector"]["matchNames"] == [RELEASE["Namespace"]]


def test_pods_run_locked_down_as_the_image_user() -> None:
    docs = manifests(render_chart())
    pod = the(docs, "Deployment")["spec"]["template"]["spec"]
    c = container(docs)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    uid = dockerfile()[-1].all("USER")[-1].split(":")[0]
    assert str(pod["securityContext"]["runAsUser"]) == uid, "the chart must run as the image's user"
    # a read-only root: /tmp (TLS set-up) and the grammar cache must be on writable volumes
    empty_dirs = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
    writable = [m["mountPath"] for m in c["volumeMounts"] if m["name"] in empty_dirs]
    assert "/tmp" in writable
    caches = {e["value"] for e in c["env"] if e["name"] == "XDG_CACHE_HOME"}
    caches.add(dockerfile_env(dockerfile()[-1])["XDG_CACHE_HOME"])
    for cache_dir in caches:
        assert any(cache_dir == w or cache_dir.startswith(w.rstrip("/") + "/") for w in writable), \
            f"XDG_CACHE_HOME={cache_dir} is not on a writable volume ({writable})"
    assert c["resources"]["requests"]["cpu"], "the HPA's CPU target needs a CPU request"


def cpu_millis(quantity: str | int | float) -> int:
    """A Kubernetes CPU quantity ("2", "1500m", 0.5) in millicores."""
    text = str(quantity)
    return int(text[:-1]) if text.endswith("m") else round(float(text) * 1000)


def kubelet_cpu_max(limit: str | int | float) -> str:
    """The cgroup v2 cpu.max the kubelet writes for a container's resources.limits.cpu (period 100 ms)."""
    return f"{cpu_millis(limit) * 100_000 // 1000} 100000\n"


def workers_under_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, limit: str | int | float) -> int:
    """What `--workers auto` starts in a container with that CPU limit on a 64-CPU node."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)), raising=False)
    root = tmp_path / str(limit)
    (root / "proc/self").mkdir(parents=True)
    (root / "proc/self/cgroup").write_text("0::/\n")
    (root / "sys/fs/cgroup").mkdir(parents=True)
    (root / "sys/fs/cgroup/cpu.max").write_text(kubelet_cpu_max(limit))
    return available_cpus(str(root))


def test_workers_default_to_auto_in_the_chart_and_the_image() -> None:
    values = values_yaml()
    assert values["workers"] == "auto"
    args = container(manifests(render_chart()))["args"]
    assert arg_after(args, "--workers") == "auto"
    cmd = json.loads(dockerfile()[-1].all("CMD")[-1])
    assert arg_after(cmd, "--workers") == "auto"
    # both are command lines the gateway accepts
    for argv in (args, cmd):
        parsed = cli_parser().parse_args(argv)
        assert parsed.workers == "auto" and parsed.config == CONFIG_FILE and parsed.command is None


@pytest.mark.parametrize(("workers", "rendered"), [(3, "3"), ("2", "2"), ("auto", "auto")])
def test_workers_set_by_the_user_render(workers: int | str, rendered: str) -> None:
    args = container(manifests(render_chart({"workers": workers})))["args"]
    assert arg_after(args, "--workers") == rendered  # a string: container args are strings
    assert cli_parser().parse_args(args).workers == rendered


@pytest.mark.parametrize("workers", ["", None])
def test_workers_unset_leaves_it_to_the_configuration(workers: str | None) -> None:
    args = container(manifests(render_chart({"workers": workers})))["args"]
    assert "--workers" not in args
    assert cli_parser().parse_args(args).workers is None


def test_the_default_cpu_limit_bounds_auto(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a CPU limit "auto" would start a worker per CPU of the node, more than the memory limit holds."""
    resources = container(manifests(render_chart()))["resources"]
    limit = resources["limits"]["cpu"]
    assert workers_under_limit(tmp_path, monkeypatch, limit) == 2
    assert cpu_millis(resources["limits"]["cpu"]) >= cpu_millis(resources["requests"]["cpu"])


@pytest.mark.parametrize(("limit", "workers"), [("1500m", 2), ("2", 2), ("500m", 1), (4, 4), ("3100m", 4)])
def test_auto_rounds_the_cpu_limit_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, limit: str | int,
                                      workers: int) -> None:
    # values.yaml says "resources.limits.cpu: 1500m gives 2 workers"
    assert "1500m gives 2 workers" in _values_text()
    assert workers_under_limit(tmp_path, monkeypatch, limit) == workers


def test_termination_outlasts_the_drain() -> None:
    values = values_yaml()
    docs = manifests(render_chart())
    pod = the(docs, "Deployment")["spec"]["template"]["spec"]
    sleep = values["preStopSleepSeconds"]
    assert container(docs)["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", str(sleep)]
    assert pod["terminationGracePeriodSeconds"] > sleep + default_config().shutdown_timeout


def test_default_config_is_a_valid_gateway_configuration() -> None:
    config = default_config()
    assert config.entrypoints, "at least one entrypoint for the Service to reach"
    assert config.providers.file is not None and config.providers.file.watch, \
        "the default must watch its file, or a ConfigMap update never reaches the pods (rollOnConfigChange=false)"
    assert all(i.severity == "warning" for i in config.warnings)


# ----------------------------------------------------------------------------------------------------------------
# Dockerfile
# ----------------------------------------------------------------------------------------------------------------


def test_dockerfile_stages() -> None:
    stages = dockerfile()
    assert len(stages) >= 2, "multi-stage: the compilers stay out of the runtime image"
    build = next((s for s in stages if s.name == "build"), None)
    assert build is not None, "a stage named build"
    assert any(re.search(r"\bmake dist\b", r) for r in build.all("RUN")), "the image is built by `make dist`"
    assert not any("auditwheel" in r or "python -m build" in r for s in stages for r in s.all("RUN")), \
        "call `make dist`, do not repeat its commands"
    # one Python for both stages (the wheel is CPython-version specific), new enough for requires-python
    bases = {s.base for s in stages}
    assert len(bases) == 1, f"all stages must use the same base image: {bases}"
    m = re.fullmatch(r"python:(\d+)\.(\d+)-slim.*", bases.pop())
    assert m, "an official python slim image"
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    minimum = re.fullmatch(r">=\s*(\d+)\.(\d+)", requires)
    assert minimum and (int(m[1]), int(m[2])) >= (int(minimum[1]), int(minimum[2]))
    # the runtime stage installs the wheel from the build stage's dist/
    runtime = stages[-1]
    dist = posixpath.join(build.all("WORKDIR")[-1], "dist")
    install = " ".join(runtime.all("RUN") + runtime.all("COPY"))
    assert "from=build" in install and dist in install and "manylinux" in install
    assert re.search(r"pip install --no-cache-dir", install)


def test_dockerfile_runtime() -> None:
    runtime = dockerfile()[-1]
    users = runtime.all("USER")
    assert users, "the runtime stage must switch to a non-root USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    assert json.loads(runtime.all("ENTRYPOINT")[-1]) == ["a3s-gateway"]
    assert json.loads(runtime.all("CMD")[-1]) == ["--config", CONFIG_FILE, "--workers", "auto"]
    exposed = {int(p.split("/")[0]) for args in runtime.all("EXPOSE") for p in args.split()}
    ports = values_yaml()["containerPorts"]
    assert exposed == {ports["http"], ports["admin"]}
    assert dockerfile_env(runtime)["XDG_CACHE_HOME"].startswith("/tmp/")
    for check in runtime.all("HEALTHCHECK"):
        assert f"127.0.0.1:{ports['admin']}{HEALTH_PATH}" in check
    labels = " ".join(runtime.all("LABEL"))
    license_ = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["license"]
    assert f'org.opencontainers.image.licenses="{license_}"' in labels
    assert 'org.opencontainers.image.title="a3s-gateway"' in labels
    assert "org.opencontainers.image.source=" in labels


def test_makefile_has_the_dist_target_the_image_runs() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^dist\s*:", makefile, re.M), "the Dockerfile and wheels.yml run `make dist`"


def _docker_ignored(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore matching: the last matching pattern decides, `!` re-includes, a directory
    pattern covers everything below it."""

    def regex(pattern: str) -> re.Pattern[str]:
        out = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                out, i = out + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                out, i = out + ".*", i + 2
            elif pattern[i] == "*":
                out, i = out + "[^/]*", i + 1
            elif pattern[i] == "?":
                out, i = out + "[^/]", i + 1
            else:
                out, i = out + re.escape(pattern[i]), i + 1
        return re.compile(out + "(?:/.*)?")

    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        if regex(pattern.lstrip("!").strip("/")).fullmatch(path):
            ignored = not negate
    return ignored


def test_dockerignore_keeps_local_state_out_and_sources_in() -> None:
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.strip().startswith("#")]
    for path in (".venv/bin/python", ".git/HEAD", "build/lib/x.py", "dist/a.whl", ".bench/x",
                 ".mypy_cache/x", ".pytest_cache/x", "src/a3s_gateway/http/_parser_c.c",
                 "src/a3s_gateway/http/_parser_c.cpython-311-x86_64-linux-gnu.so", "tests/__pycache__/x.pyc"):
        assert _docker_ignored(path, patterns), f"{path} must not be sent to the image build"
    for path in ("Makefile", "pyproject.toml", "setup.py", "README.md", "csrc/http1.c", "csrc/http1.h",
                 "src/a3s_gateway/__init__.py", "src/a3s_gateway/http/_parser_c.pyx", "src/a3s_gateway/py.typed"):
        assert (ROOT / path).exists(), path
        assert not _docker_ignored(path, patterns), f"the build needs {path}"


# ----------------------------------------------------------------------------------------------------------------
# GitHub workflows
# ----------------------------------------------------------------------------------------------------------------


def test_wheels_workflow() -> None:
    wf = workflow("wheels.yml")
    on = triggers(wf)
    assert on["push"]["tags"] == ["v*"] and "workflow_dispatch" in on and "pull_request" in on
    jobs = wf["jobs"]
    assert {"sdist", "pure-wheel", "wheels", "make-dist", "publish"} <= jobs.keys()

    assert "python -m build --sdist" in run_text(jobs["sdist"])

    pure = jobs["pure-wheel"]
    build_step = next(s for s in steps(pure) if "python -m build --wheel" in str(s.get("run", "")))
    assert str(build_step.get("env", {}).get("A3S_GATEWAY_NO_EXTENSIONS")) == "1"
    assert "A3S_GATEWAY_NO_EXTENSIONS" in (ROOT / "setup.py").read_text(), "the variable the pure build sets"
    assert "py3-none-any" in run_text(pure)

    wheels = jobs["wheels"]
    assert wheels["needs"] == "sdist" or "sdist" in wheels["needs"]
    assert set(wheels["strategy"]["matrix"]["os"]) == {"ubuntu-latest", "ubuntu-24.04-arm", "macos-13", "macos-14"}
    (cibw,) = uses(wheels, "pypa/cibuildwheel")
    assert cibw["uses"].startswith("pypa/cibuildwheel@v2")
    config_file = cibw["with"]["config-file"]
    assert config_file.endswith("/cibuildwheel.toml") or config_file == "cibuildwheel.toml"
    assert (ROOT / "cibuildwheel.toml").is_file()
    assert "sdist" in cibw["with"]["package-dir"], "wheels are built from the sdist artifact"
    assert any(s.get("with", {}).get("name") == "dist-sdist" for s in uses(wheels, "actions/download-artifact"))

    make_dist = run_text(jobs["make-dist"])
    assert re.search(r"^make dist\b", make_dist, re.M)
    assert re.search(r"^make test-dist\b", make_dist, re.M)  # the wheel just built, in a fresh venv

    publish = jobs["publish"]
    assert publish["permissions"]["id-token"] == "write"
    environment = publish["environment"]
    assert (environment["name"] if isinstance(environment, dict) else environment) == "pypi"
    assert "refs/tags/" in publish["if"]
    assert {"sdist", "pure-wheel", "wheels"} <= set(publish["needs"])
    (pypi,) = uses(publish, "pypa/gh-action-pypi-publish")
    assert pypi["uses"] == "pypa/gh-action-pypi-publish@release/v1"
    assert "password" not in pypi.get("with", {}), "trusted publishing: no token"


def test_binary_workflow() -> None:
    wf = workflow("binary.yml")
    on = triggers(wf)
    assert on["push"]["tags"] == ["v*"] and "workflow_dispatch" in on
    jobs = wf["jobs"]
    binary = jobs["binary"]
    assert set(binary["strategy"]["matrix"]["os"]) == {"ubuntu-22.04", "macos-14"}
    commands = run_text(binary)
    assert re.search(r"^make binary\b", commands, re.M), "binary.yml builds with `make binary`"
    assert re.search(r"^make test-binary\b", commands, re.M)
    (upload,) = uses(binary, "actions/upload-artifact")
    assert upload["with"]["path"] == "dist/a3s-gateway-*"
    assert "refs/tags/" in jobs["release"]["if"] and jobs["release"]["permissions"]["contents"] == "write"

    docker = jobs["docker"]
    image = docker["env"]["IMAGE"]
    assert image == values_yaml()["image"]["repository"] == "ghcr.io/a3s-lab/gateway"
    (build,) = uses(docker, "docker/build-push-action")
    assert set(build["with"]["platforms"].split(",")) == {"linux/amd64", "linux/arm64"}
    assert "refs/tags/" in str(build["with"]["push"]), "push only on tags"
    assert ":latest" in run_text(docker)
    (login,) = uses(docker, "docker/login-action")
    assert login["with"]["registry"] == "ghcr.io" and "GITHUB_TOKEN" in login["with"]["password"]
    assert docker["permissions"]["packages"] == "write"


def test_acme_storage_is_not_persisted_by_default() -> None:
    docs = manifests(render_chart())
    assert not [d for d in docs if d["kind"] == "PersistentVolumeClaim"]
    assert {m["name"] for m in container(docs)["volumeMounts"]} == {"config", "tmp"}


def test_acme_storage_on_a_persistent_volume_claim() -> None:
    values = {"acmeStorage": {"persistence": {"enabled": True, "size": "1Gi", "storageClassName": "fast"}}}
    docs = manifests(render_chart(values))
    claim = the(docs, "PersistentVolumeClaim")
    deployment = the(docs, "Deployment")
    assert claim["metadata"]["name"] == deployment["metadata"]["name"] + "-acme"
    assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert claim["spec"] == {"accessModes": ["ReadWriteOnce"], "storageClassName": "fast",
                             "resources": {"requests": {"storage": "1Gi"}}}
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["acme"]["persistentVolumeClaim"] == {"claimName": claim["metadata"]["name"]}
    mounts = {m["name"]: m for m in container(docs)["volumeMounts"]}
    assert mounts["acme"]["mountPath"] == values_yaml()["acmeStorage"]["persistence"]["mountPath"]
    assert "readOnly" not in mounts["acme"], "the gateway writes certificates there"


def test_acme_claim_name_is_a_dns_label_with_a_long_release_name() -> None:
    docs = manifests(render_chart({**LONG_NAME, "acmeStorage": {"persistence": {"enabled": True}}}))
    name = the(docs, "PersistentVolumeClaim")["metadata"]["name"]
    assert len(name) <= 63 and DNS_LABEL.fullmatch(name) and name.endswith("-acme")
    volumes = {v["name"]: v for v in the(docs, "Deployment")["spec"]["template"]["spec"]["volumes"]}
    assert volumes["acme"]["persistentVolumeClaim"] == {"claimName": name}


def test_acme_storage_on_an_existing_claim() -> None:
    values = {"acmeStorage": {"persistence": {"enabled": True, "existingClaim": "certs"}}}
    docs = manifests(render_chart(values))
    assert not [d for d in docs if d["kind"] == "PersistentVolumeClaim"]
    volumes = {v["name"]: v for v in the(docs, "Deployment")["spec"]["template"]["spec"]["volumes"]}
    assert volumes["acme"]["persistentVolumeClaim"] == {"claimName": "certs"}


# ----------------------------------------------------------------------------------------------------------------
# Helm chart: the Kubernetes provider (SPEC §12.5, §12.6)
# ----------------------------------------------------------------------------------------------------------------

KUBERNETES: dict[str, Any] = {"providers": {"kubernetes": {"enabled": True}}}
CRD_FILE = CHART / "crds" / "ingressroutes.a3s-gateway.io.yaml"


def rbac_rules(docs: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    return {(group, resource, verb) for rule in the(docs, "ClusterRole")["rules"] for group in rule["apiGroups"]
            for resource in rule["resources"] for verb in rule["verbs"]}


def watched(group: str, *resources: str) -> set[tuple[str, str, str]]:
    return {(group, r, v) for r in resources for v in ("get", "list", "watch")}


def test_kubernetes_provider_is_off_by_default() -> None:
    docs = manifests(render_chart())
    assert not [d for d in docs if d["kind"] in ("ClusterRole", "ClusterRoleBinding", "IngressClass")]
    assert default_config().providers.kubernetes is None
    assert the(docs, "Deployment")["spec"]["template"]["spec"]["automountServiceAccountToken"] is False


def test_kubernetes_provider_switched_on() -> None:
    from a3s_gateway.config.model import KubernetesProviderConfig
    from a3s_gateway.providers.kube_translate import CONTROLLER

    docs = manifests(render_chart(KUBERNETES))
    assert sorted(d["kind"] for d in docs) == sorted(
        ["ConfigMap", "Deployment", "Service", "Service", "ServiceAccount", "ClusterRole", "ClusterRoleBinding",
         "IngressClass"])
    for doc in docs:
        assert DNS_LABEL.fullmatch(doc["metadata"]["name"]), doc["metadata"]["name"]
    config = load_config(rendered_config(KUBERNETES))
    assert config.providers.kubernetes == KubernetesProviderConfig(ingress_class="a3s-gateway", ingress_route_crd=True)
    assert config.providers.file is not None and config.providers.file.watch
    ingress_class = the(docs, "IngressClass")
    assert ingress_class["apiVersion"] == "networking.k8s.io/v1"
    assert ingress_class["metadata"]["name"] == config.providers.kubernetes.ingress_class
    assert ingress_class["spec"]["controller"] == CONTROLLER
    assert "annotations" not in ingress_class["metadata"], "not the cluster's default class unless asked"
    # RBAC: what the provider lists and watches (§12.5: get/list/watch), the Ingress status it writes
    assert rbac_rules(docs) == (
        watched("networking.k8s.io", "ingresses", "ingressclasses") | watched("", "services", "secrets")
        | watched("discovery.k8s.io", "endpointslices") | watched("a3s-gateway.io", "ingressroutes")
        | {("networking.k8s.io", "ingresses/status", "update"), ("networking.k8s.io", "ingresses/status", "patch")})
    role, binding = the(docs, "ClusterRole"), the(docs, "ClusterRoleBinding")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                  "name": role["metadata"]["name"]}
    pod = the(docs, "Deployment")["spec"]["template"]["spec"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": pod["serviceAccountName"],
                                    "namespace": RELEASE["Namespace"]}]
    assert pod["automountServiceAccountToken"] is True, "the provider needs the ServiceAccount token"
    assert the(docs, "ServiceAccount")["automountServiceAccountToken"] is True


def test_kubernetes_provider_options_render_into_the_config() -> None:
    from a3s_gateway.config import hcl

    values = {"providers": {"kubernetes": {
        "enabled": True, "ingressRouteCRD": False, "namespace": "apps", "labelSelector": "team=ai",
        "ingressClass": {"name": "edge", "default": True}, "publishService": "gw/gateway"}}}
    docs = manifests(render_chart(values))
    text = rendered_config(values)
    assert '    publish_service   = "gw/gateway"\n' in text  # the key of the provider's status writer
    _, issues = hcl.parse(text, "gateway.hcl")
    assert not issues
    without = load_config(rendered_config({"providers": {"kubernetes": {**values["providers"]["kubernetes"],
                                                                         "publishService": ""}}}))
    k8s = without.providers.kubernetes
    assert k8s is not None
    assert (k8s.ingress_class, k8s.ingress_route_crd, k8s.namespace, k8s.label_selector) == (
        "edge", False, "apps", "team=ai")
    ingress_class = the(docs, "IngressClass")
    assert ingress_class["metadata"]["name"] == "edge"
    assert ingress_class["metadata"]["annotations"] == {"ingressclass.kubernetes.io/is-default-class": "true"}
    assert not {r for r in rbac_rules(docs) if r[0] == "a3s-gateway.io"}, "no IngressRoute access without the CRD"
    # an existing IngressClass (created elsewhere) is not rendered again
    no_class = manifests(render_chart({"providers": {"kubernetes": {"enabled": True,
                                                                     "ingressClass": {"create": False}}}}))
    assert not [d for d in no_class if d["kind"] == "IngressClass"]


def test_a_config_with_its_own_providers_block() -> None:
    own = 'entrypoints "web" {\n  address = "0.0.0.0:8080"\n}\nproviders {\n  file {\n    watch = false\n  }\n}\n'
    assert rendered_config({"config": own}) == own, "used as it is"
    assert load_config(own).providers.file is not None
    with pytest.raises(TemplateFailed, match="has its own providers block"):
        render_chart({"config": own, **KUBERNETES})


def test_scaling_executor_rbac() -> None:
    docs = manifests(render_chart({"rbac": {"scaleDeployments": True}}))
    assert rbac_rules(docs) == watched("discovery.k8s.io", "endpointslices") | {
        ("apps", "deployments", "get"), ("apps", "deployments/scale", "get"),
        ("apps", "deployments/scale", "update"), ("apps", "deployments/scale", "patch")}
    assert not [d for d in docs if d["kind"] == "IngressClass"]
    assert the(docs, "Deployment")["spec"]["template"]["spec"]["automountServiceAccountToken"] is True


def _structural(schema: dict[str, Any], where: str) -> None:
    """Every node of a structural schema has a type (or is int-or-string); objects list their properties."""
    assert "type" in schema or schema.get("x-kubernetes-int-or-string") is True, f"{where}: no type"
    for name, sub in schema.get("properties", {}).items():
        _structural(sub, f"{where}.{name}")
    if "items" in schema:
        _structural(schema["items"], f"{where}[]")


def test_ingress_route_crd() -> None:
    crd = yaml.safe_load(CRD_FILE.read_text())
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1" and crd["kind"] == "CustomResourceDefinition"
    spec = crd["spec"]
    assert crd["metadata"]["name"] == f"{spec['names']['plural']}.{spec['group']}" == "ingressroutes.a3s-gateway.io"
    assert (spec["scope"], spec["names"]["kind"]) == ("Namespaced", "IngressRoute")
    (version,) = spec["versions"]
    assert (version["name"], version["served"], version["storage"]) == ("v1alpha1", True, True)
    schema = version["schema"]["openAPIV3Schema"]
    _structural(schema, "openAPIV3Schema")
    route_spec = schema["properties"]["spec"]
    assert set(route_spec["properties"]) == {"entryPoints", "routes", "tls"}
    route = route_spec["properties"]["routes"]["items"]
    assert set(route["properties"]) == {"match", "priority", "middlewares", "services"}
    assert set(route["required"]) == {"match", "services"}
    service = route["properties"]["services"]["items"]
    assert set(service["properties"]) == {"name", "port", "weight", "scheme", "strategy"}
    assert set(service["required"]) == {"name", "port"}
    from a3s_gateway.providers.kube_translate import SCHEMES, STRATEGIES

    assert service["properties"]["scheme"]["enum"] == list(SCHEMES)
    assert service["properties"]["strategy"]["enum"] == list(STRATEGIES)
    assert route_spec["properties"]["tls"]["properties"] == {"secretName": {
        "type": "string", "description": route_spec["properties"]["tls"]["properties"]["secretName"]["description"]}}
