"""HCL reading (SPEC §2.1, §2.2): `;`, interpolation, heredocs, literal-only values, positions, grammar cache."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from a3s_gateway.config import GatewayConfig, grammar
from a3s_gateway.config.hcl import Body, Entry, ListNode, Pos, Scalar, Unsupported, parse
from a3s_gateway.errors import ConfigError

SRC = Path(__file__).resolve().parents[3] / "src"


def attrs(text: str, env: dict[str, str] | None = None) -> dict[str, Entry]:
    body, issues = parse(text, "f.hcl", env or {})
    assert not issues, [str(i) for i in issues]
    assert body is not None
    return {e.key: e for e in body.entries}


def value(text: str, env: dict[str, str] | None = None) -> object:
    node = attrs(text, env)["a"].value
    assert isinstance(node, Scalar)
    assert not node.problems, node.problems
    return node.value


def errors(text: str, env: dict[str, str] | None = None) -> list[str]:
    try:
        GatewayConfig.from_hcl(text, "g.hcl", env=env or {})
    except ConfigError as exc:
        return [str(i) for i in exc.issues if i.severity == "error"]
    return []


# --- `;` ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('b { x = 1; y = "a;b" }', {"x": 1, "y": "a;b"}),
        ("b { x = 1; y = 2; }", {"x": 1, "y": 2}),
        ("b { x = 1 # not; a separator\n y = 2 }", {"x": 1, "y": 2}),
        ("b { x = 1 // a; b\n y = 2 }", {"x": 1, "y": 2}),
        ("b { x = 1; /* ; */ y = 2 }", {"x": 1, "y": 2}),
        ("b { x = <<EOF\na;b\nEOF\n y = 2 }", {"x": "a;b\n", "y": 2}),
        ('b { x = "\\";"; y = 2 }', {"x": '";', "y": 2}),
    ],
)
def test_semicolon_is_a_newline_outside_strings_comments_heredocs(text: str, expected: dict[str, object]) -> None:
    block = attrs(text)["b"]
    assert isinstance(block.value, Body)
    got = {e.key: e.value.value for e in block.value.entries if isinstance(e.value, Scalar)}
    assert got == expected


def test_positions_after_semicolons_are_those_of_the_original_text() -> None:
    text = 'middlewares "m" { type = "rate-limit"; rate = 1; burst = "x" }\nroot = 2\n'
    body, issues = parse(text, "f.hcl", {})
    assert not issues and body is not None
    block = body.entries[0]
    assert isinstance(block.value, Body)
    cols = {e.key: (e.pos.line, e.pos.col) for e in block.value.entries}
    assert cols == {"type": (1, 19), "rate": (1, 40), "burst": (1, 50)}
    assert body.entries[1].pos == Pos("f.hcl", 2, 1)


def test_two_attributes_on_one_line_need_a_separator() -> None:
    _, issues = parse("a = 1 b = 2\n", "f.hcl", {})
    assert [str(i) for i in issues] == ['f.hcl:1:7: error: syntax error: expected newline or ";" between two items']
    _, issues = parse("o = { a = 1 b = 2 }\n", "f.hcl", {})
    assert [str(i) for i in issues] == ['f.hcl:1:13: error: syntax error: expected "," or newline between two items']


# --- interpolation (§2.2) ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "env", "expected"),
    [
        ('a = "${V}"', {"V": "x"}, "x"),
        ('a = "pre-${V}-post"', {"V": "x"}, "pre-x-post"),
        ('a = "${V}"', {"V": ""}, ""),
        ('a = "${V:-dflt}"', {}, "dflt"),
        ('a = "${V:-dflt}"', {"V": ""}, "dflt"),
        ('a = "${V:-dflt}"', {"V": "set"}, "set"),
        ('a = "${V:-}"', {}, ""),
        ('a = "${V:-a b;c}"', {}, "a b;c"),
        ('a = "${V:-say \\"hi\\"}"', {}, 'say "hi"'),
        ('a = "$${V}"', {"V": "x"}, "${V}"),
        ('a = "%%{V}"', {}, "%{V}"),
        ('a = "$V and $ and %"', {}, "$V and $ and %"),
        ('a = "${V}"', {"V": "${W}"}, "${W}"),  # single pass
        ('a = "${V}"', {"V": 'q"b\\s\nl\t%{x}'}, 'q"b\\s\nl\t%{x}'),
        ('a = "${A}${B}"', {"A": "1", "B": "2"}, "12"),
        ("a = <<EOF\n${V}\nEOF\n", {"V": "x"}, "x\n"),
        ("a = <<EOF\n$${V} %%{x}\nEOF\n", {"V": "x"}, "${V} %{x}\n"),
        ("a = <<-EOF\n    one\n      ${V}\n    EOF\n", {"V": "two"}, "one\n  two\n"),
    ],
)
def test_interpolation(source: str, env: dict[str, str], expected: str) -> None:
    assert value(source, env) == expected


@given(st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=40))
@settings(max_examples=200, deadline=None)
def test_any_environment_value_comes_back_unchanged(secret: str) -> None:
    assert value('a = "${V}"\n', {"V": secret}) == secret
    assert value("a = <<EOF\n${V}\nEOF\n", {"V": secret}) == secret + "\n"


def test_unset_variable_is_reported_at_the_attribute_that_uses_it() -> None:
    text = 'middlewares "auth-jwt"   { type = "jwt"; value = "${JWT_SECRET}" }\n'
    assert errors(text) == [
        'g.hcl:1:42: error: middlewares.auth-jwt.value: environment variable "JWT_SECRET" is not set\n'
        "    help: export it, or write ${JWT_SECRET:-default}"
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            'workers = "${1BAD}"\n',
            'g.hcl:1:1: error: workers: unsupported interpolation "${1BAD}": only ${VAR} and ${VAR:-default} are '
            "allowed\n    help: write $${ for a literal ${",
        ),
        (
            'workers = "${upper(x)}"\n',
            'g.hcl:1:1: error: workers: unsupported interpolation "${upper(x)}": only ${VAR} and ${VAR:-default} '
            "are allowed\n    help: write $${ for a literal ${",
        ),
        (
            'workers = "%{if true}2%{endif}"\n',
            'g.hcl:1:1: error: workers: unsupported expression "%{if true}": only literal values are allowed',
        ),
        (
            'entrypoints "w" {\n  trusted_ips = ["10.0.0.1", "${NOPE}"]\n  address = ":1"\n}\n',
            'g.hcl:2:3: error: entrypoints.w.trusted_ips[1]: environment variable "NOPE" is not set\n'
            "    help: export it, or write ${NOPE:-default}",
        ),
    ],
)
def test_interpolation_errors(text: str, expected: str) -> None:
    assert errors(text)[0] == expected


def test_a_failed_interpolation_causes_no_follow_up_diagnostics() -> None:
    text = 'middlewares "r" {\n  type = "rate-limit"\n  rate = "${RATE}"\n}\n'
    assert len(errors(text)) == 1


def test_interpolated_strings_convert_to_typed_keys() -> None:
    text = 'middlewares "r" { type = "rate-limit"; rate = "${RATE:-60}"; burst = "${B}" }\n'
    config = GatewayConfig.from_hcl(text, env={"B": "7"})
    assert config.middlewares["r"].params["rate"] == 60.0
    assert config.middlewares["r"].params["burst"] == 7


def test_positions_after_a_substitution_are_unchanged() -> None:
    text = 'middlewares "m" { type = "${T}"; rate = "fast" }\n'
    for value in ("rate-limit", "RATE_LIMIT", "  Rate-Limit  "):
        assert errors(text, {"T": value}) == [
            'g.hcl:1:34: error: middlewares.m.rate: expected number, got string "fast"'
        ]
    text = 'x = "${LONG_VARIABLE_NAME}"; y = "${S}" ; z = @\n'
    _, issues = parse(text, "f.hcl", {"LONG_VARIABLE_NAME": "", "S": "a much longer value than the reference"})
    assert [(i.line, i.col) for i in issues] == [(1, 47)]


# --- values ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("a = 1", 1),
        ("a = -2", -2),
        ("a = 1.5", 1.5),
        ("a = -0.25", -0.25),
        ("a = 1e3", 1000.0),
        ("a = true", True),
        ("a = false", False),
        ("a = null", None),
        ('a = "x\\ty\\n\\u00e9\\U0001F600\\\\"', "x\ty\né😀\\"),
        ('a = "HostSNI(`*`) && Header(\\"X\\", \\"y\\")"', 'HostSNI(`*`) && Header("X", "y")'),
    ],
)
def test_literal_values(source: str, expected: object) -> None:
    assert value(source) == expected


def test_lists_and_objects_keep_positions_and_order() -> None:
    entries = attrs('a = [1, "x", [true], { k = 1, "Quoted-Key" = "v", m: 2 }]\n')
    node = entries["a"].value
    assert isinstance(node, ListNode)
    assert [type(i).__name__ for i in node.items] == ["Scalar", "Scalar", "ListNode", "Body"]
    obj = node.items[3]
    assert isinstance(obj, Body) and obj.is_object
    assert [(e.key, e.pos.col) for e in obj.entries] == [("k", 24), ("Quoted-Key", 31), ("m", 51)]


@pytest.mark.parametrize(
    ("source", "shown"),
    [
        ('a = upper("x")', 'upper("x")'),
        ("a = var.x", "var.x"),
        ("a = x", "x"),
        ("a = true ? 1 : 2", "true ? 1 : 2"),
        ("a = 1 + 2", "1 + 2"),
        ("a = [for x in [1]: x]", "[for x in [1]: x]"),
        ("a = (1)", "(1)"),
        ("a = -x", "-x"),
        ("a = !true", "!true"),
        ("a = [1][0]", "[1][0]"),
    ],
)
def test_only_literals_are_allowed(source: str, shown: str) -> None:
    node = attrs(source)["a"].value
    assert isinstance(node, Unsupported)
    assert node.text == shown


def test_unsupported_expression_diagnostic() -> None:
    assert errors('workers = upper("x")\n') == [
        'g.hcl:1:1: error: workers: unsupported expression "upper(\\"x\\")": only literal values are allowed'
    ]


def test_bom_is_ignored_and_columns_count_code_points() -> None:
    body, issues = parse('\ufeffa = "ééé"; b = 1\n', "f.hcl", {})
    assert not issues and body is not None
    assert [(e.key, e.pos.col) for e in body.entries] == [("a", 1), ("b", 12)]


def test_crlf_line_endings() -> None:
    entries = attrs('a = 1\r\nb { c = "x" }\r\nd = <<EOF\r\nline\r\nEOF\r\n')
    assert entries["b"].pos.line == 2 and entries["d"].pos.line == 3
    d = entries["d"].value
    assert isinstance(d, Scalar) and d.value == "line\n"


def test_labels_and_blocks() -> None:
    entries = attrs('services "llm-backend" {\n  load_balancer {}\n}\n')
    block = entries["services"]
    assert block.labels == [("llm-backend", Pos("f.hcl", 1, 10))]
    assert isinstance(block.value, Body)
    assert block.value.entries[0].pos == Pos("f.hcl", 2, 3)


# --- syntax errors -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('entrypoints "w" {\n  address = ":1"\n', 'f.hcl:3:1: error: syntax error: expected "}", got end of file'),
        ("a = 1\nb = \n", "f.hcl:2:5: error: syntax error: expected a value, got end of line"),
        ('a = "open\nb = 1\n', "f.hcl:1:5: error: syntax error: unterminated string (a string ends on its line)"),
        ("a = <<EOF\nnever closed\n", "f.hcl:1:5: error: syntax error: heredoc <<EOF is not closed by a EOF line"),
        ('x = "${A}"; y = @\n', 'f.hcl:1:17: error: syntax error: expected a value, got "@"'),
        ("a = 1 }\n", 'f.hcl:1:7: error: syntax error: unexpected "}"'),
    ],
)
def test_syntax_errors_have_original_positions(text: str, expected: str) -> None:
    _, issues = parse(text, "f.hcl", {"A": "a long replacement value"})
    assert [str(i) for i in issues] == [expected]


def test_syntax_error_through_the_loader() -> None:
    assert errors('entrypoints "w" { address = ":1"\n') == [
        'g.hcl:2:1: error: syntax error: expected "}", got end of file'
    ]


# --- grammar cache (§13.3) -----------------------------------------------------------------------------------------


def test_grammar_cache_lives_in_xdg_cache_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert grammar.user_cache_dir() == tmp_path / "a3s-gateway"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert grammar.user_cache_dir() == Path.home() / ".cache" / "a3s-gateway"


def test_build_ships_the_grammar_tables_and_a_fresh_process_parses_fast(tmp_path: Path) -> None:
    """SPEC §13.3: first request within 1 s, also on the first run after installation (empty user cache)."""
    shipped = grammar.package_dir() / grammar.grammar_file_name()
    assert shipped.is_file(), "the build did not write the grammar tables: run `make build`"
    readme = Path(__file__).resolve().parents[2] / "fixtures" / "readme_full.hcl"
    script = (
        "import time; t = time.perf_counter()\n"
        "from a3s_gateway.config.hcl import parse\n"
        f"body, issues = parse(open({str(readme)!r}).read(), 'g.hcl', {{'JWT_SECRET': 'x'}})\n"
        "assert body is not None and not issues, issues\n"
        "print(time.perf_counter() - t)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(SRC), "XDG_CACHE_HOME": str(tmp_path)}
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    wall = time.perf_counter() - started
    assert float(out.stdout) < 1.0, out.stdout  # import + first parse in a fresh process, empty user cache
    assert wall < 2.5, wall  # interpreter start-up included; generous for a shared machine
    assert not (tmp_path / "a3s-gateway").exists(), "the user cache was written although tables were shipped"


def test_without_shipped_tables_the_user_cache_is_built_once(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(grammar, "package_dir", lambda: tmp_path / "empty")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    builds = 0
    real_build = grammar.build_parser

    def counting_build() -> object:
        nonlocal builds
        builds += 1
        return real_build()

    monkeypatch.setattr(grammar, "build_parser", counting_build)
    first = grammar.load_parser()
    cached = tmp_path / "cache" / "a3s-gateway" / grammar.grammar_file_name()
    assert builds == 1 and cached.is_file()
    second = grammar.load_parser()
    assert builds == 1  # loaded, not rebuilt
    text = 'a = 1\nb { c = "d" }\n'
    assert first.parse(text) == second.parse(text)
    assert [p.name for p in cached.parent.iterdir()] == [cached.name]  # no temp files left behind


def test_corrupt_cache_is_rebuilt(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(grammar, "package_dir", lambda: tmp_path / "empty")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    cached = tmp_path / "a3s-gateway" / grammar.grammar_file_name()
    cached.parent.mkdir()
    cached.write_bytes(b"not a pickle")
    parser = grammar.load_parser()
    assert parser.parse("a = 1\n") is not None
    assert cached.read_bytes() != b"not a pickle"


@given(
    st.lists(
        st.tuples(
            st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True),
            st.one_of(st.integers(-5, 5000), st.text(alphabet="abc ;#$/*{}", max_size=6)),
        ),
        min_size=1,
        max_size=6,
    )
)
@settings(max_examples=100, deadline=None)
def test_semicolon_separated_attributes_keep_their_columns(items: list[tuple[str, object]]) -> None:
    parts: list[str] = []
    columns: list[int] = []
    line = ""
    for key, raw in items:
        shown = str(raw) if isinstance(raw, int) else '"' + str(raw).replace("${", "$${").replace("%{", "%%{") + '"'
        if line:
            line += "; "
        columns.append(len(line) + 1)
        line += f"{key} = {shown}"
        parts.append(key)
    body, issues = parse("b { " + line + " }\n", "f.hcl", {})
    assert not issues and body is not None
    block = body.entries[0].value
    assert isinstance(block, Body)
    assert [(e.key, e.pos.line, e.pos.col) for e in block.entries] == [
        (k, 1, c + 4) for k, c in zip(parts, columns, strict=True)
    ]
    values = [e.value.value for e in block.entries if isinstance(e.value, Scalar)]
    assert values == [raw for _, raw in items]


def test_commas_separate_attributes_of_one_line_blocks_only(tmp_path: Path) -> None:
    """`file { watch = true, directory = "d" }` as SPEC §3.5 and issue #3 write it; object and list commas stay."""
    (tmp_path / "d").mkdir()
    text = (
        'entrypoints "web" { address = "127.0.0.1:0", max_headers = 50, }\n'
        'routers "r" { rule = "PathPrefix(`/`)", service = "s" }\n'
        'services "s" { load_balancer { servers = [{ url = "http://127.0.0.1:1", weight = 2 },\n'
        '  { url = "http://127.0.0.1:2" }] } }\n'
        f'providers {{ file {{ watch = true, directory = "{tmp_path / "d"}" }} }}\n'
        'middlewares "m" { type = "headers", request_headers = { "X-A" = "1", "X-B" = "b,c" } }\n'
    )
    cfg = GatewayConfig.from_hcl(text, filename="g.hcl")
    assert cfg.entrypoints["web"].max_headers == 50
    assert cfg.routers["r"].service == "s"
    assert [(s.url, s.weight) for s in cfg.services["s"].load_balancer.servers] == [
        ("http://127.0.0.1:1", 2), ("http://127.0.0.1:2", 1)]
    assert cfg.providers.file is not None and cfg.providers.file.watch is True
    assert dict(cfg.middlewares["m"].params["request_headers"]) == {"X-A": "1", "X-B": "b,c"}
    with pytest.raises(ConfigError) as e:
        GatewayConfig.from_hcl('entrypoints "web" { address = "127.0.0.1:0", bogus = 1 }\n', filename="g.hcl")
    assert "g.hcl:1:46:" in str(e.value)  # positions unchanged by the rewrite
