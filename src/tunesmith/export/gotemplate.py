"""Evaluate the subset of Go's text/template that Ollama chat templates use, to check parity.

Ollama renders prompts with Go's text/template, and no maintained Python package evaluates Go
templates, so the few constructs chat templates need are interpreted here: text, `{{ .Field }}`,
variables (`$x := …`, `$x = …`, `$.Field`), `if / else if / else`, `range` (with `$i, $m :=`),
comments, `-` whitespace trimming, and the functions eq, ne, lt, le, gt, ge, and, or, not, len,
index. Anything else raises `TemplateError` naming the construct, rather than guessing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from tunesmith.errors import TemplateError

_ACTION = re.compile(r"\{\{(-\s)?(.*?)(\s-)?\}\}", re.DOTALL)
_TOKEN = re.compile(r'\s*(?:(:=|=|\(|\)|,)|("(?:[^"\\]|\\.)*")|(`[^`]*`)|(-?\d+(?:\.\d+)?)'
                    r"|(\$[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*|\$(?:\.[A-Za-z_]\w*)*)|(\.(?:[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)?)"
                    r"|([A-Za-z_]\w*)|(\|))")
_SPACE = " \t\r\n"  # what Go's trim markers remove (ASCII whitespace only)


@dataclass
class _Node:
    kind: str  # text, print, if, range
    text: str = ""
    expr: list = field(default_factory=list)
    branches: list = field(default_factory=list)  # if: [(expr, body)]; range: [(expr, body)]
    else_body: list = field(default_factory=list)
    names: list = field(default_factory=list)  # range variables


def _lex(source: str) -> list[tuple[str, str]]:
    """[("text", s) | ("action", body)] with `{{-` / `-}}` trimming applied."""
    items: list[tuple[str, str]] = []
    pos = 0
    trim_next = False
    for match in _ACTION.finditer(source):
        text = source[pos : match.start()]
        if trim_next:
            text = text.lstrip(_SPACE)
        if match.group(1):
            text = text.rstrip(_SPACE)
        if text:
            items.append(("text", text))
        body = match.group(2).strip()
        if not (body.startswith("/*") and body.endswith("*/")):
            items.append(("action", body))
        trim_next = bool(match.group(3))
        pos = match.end()
    tail = source[pos:]
    if trim_next:
        tail = tail.lstrip(_SPACE)
    if "{{" in tail:
        raise TemplateError("unterminated {{ in the template")
    if tail:
        items.append(("text", tail))
    return items


def _tokens(body: str) -> list[str]:
    out, pos = [], 0
    while pos < len(body):
        if body[pos:].strip() == "":
            break
        match = _TOKEN.match(body, pos)
        if match is None or match.end() == pos:
            raise TemplateError(f"cannot parse `{{{{ {body} }}}}` at {body[pos:pos + 20]!r}")
        token = next(g for g in match.groups() if g is not None)
        if token == "|":
            raise TemplateError(f"pipelines (`|`) are not supported in `{{{{ {body} }}}}`")
        out.append(token)
        pos = match.end()
    return out


def _parse(items: list[tuple[str, str]], pos: int, stop: tuple[str, ...]) -> tuple[list[_Node], int, str]:
    nodes: list[_Node] = []
    while pos < len(items):
        kind, body = items[pos]
        if kind == "text":
            nodes.append(_Node("text", text=body))
            pos += 1
            continue
        word = body.split(None, 1)[0] if body else ""
        if word in stop or (word == "else" and "else" in stop):
            return nodes, pos, body
        if word == "if":
            node = _Node("if")
            cond = body[2:].strip()
            while True:
                sub, pos, closing = _parse(items, pos + 1, ("else", "end"))
                node.branches.append((_tokens(cond), sub))
                if closing.startswith("else if ") or closing.startswith("else if\t"):
                    cond = closing[len("else if"):].strip()
                    continue
                if closing == "else":
                    node.else_body, pos, closing = _parse(items, pos + 1, ("end",))
                break
            nodes.append(node)
            pos += 1
        elif word == "range":
            expr = _tokens(body[5:].strip())
            names: list[str] = []
            if ":=" in expr:
                at = expr.index(":=")
                names = [t for t in expr[:at] if t != ","]
                expr = expr[at + 1 :]
            node = _Node("range", names=names)
            sub, pos, closing = _parse(items, pos + 1, ("else", "end"))
            node.branches.append((expr, sub))
            if closing == "else":
                node.else_body, pos, _ = _parse(items, pos + 1, ("end",))
            nodes.append(node)
            pos += 1
        elif word in ("with", "define", "template", "block", "break", "continue"):
            raise TemplateError(f"`{{{{ {body} }}}}` uses `{word}`, which parity checking does not evaluate")
        elif word in ("end", "else"):
            raise TemplateError(f"unexpected `{{{{ {body} }}}}`")
        else:
            nodes.append(_Node("print", expr=_tokens(body)))
            pos += 1
    if stop:
        raise TemplateError(f"the template is missing a `{{{{ end }}}}` (expected one of {', '.join(stop)})")
    return nodes, pos, ""


def _truthy(value: Any) -> bool:
    return value not in (None, False, 0, "") and not (isinstance(value, (list, dict)) and not value)


def _field(value: Any, path: list[str]) -> Any:
    for name in path:
        if isinstance(value, dict) and name in value:
            value = value[name]
        else:
            raise TemplateError(f"the template reads .{name}, which Ollama does not provide here")
    return value


class _Scope:
    def __init__(self, root: Any):
        self.root = root
        self.frames: list[dict[str, Any]] = [{"$": root}]

    def get(self, name: str) -> Any:
        for frame in reversed(self.frames):
            if name in frame:
                return frame[name]
        raise TemplateError(f"undefined variable {name}")

    def set(self, name: str, value: Any) -> None:
        for frame in reversed(self.frames):
            if name in frame:
                frame[name] = value
                return
        raise TemplateError(f"assignment to undeclared variable {name}")


_FUNCS = {
    "eq": lambda a, *bs: any(a == b for b in bs),
    "ne": lambda a, b: a != b,
    "lt": lambda a, b: a < b, "le": lambda a, b: a <= b, "gt": lambda a, b: a > b, "ge": lambda a, b: a >= b,
    "not": lambda a: not _truthy(a),
    "len": lambda a: len(a),
    "index": lambda a, *keys: _index(a, keys),
}


def _index(value: Any, keys) -> Any:
    for key in keys:
        value = value[key]
    return value


def _operand(tokens: list[str], pos: int, dot: Any, scope: _Scope) -> tuple[Any, int]:
    token = tokens[pos]
    if token == "(":
        value, pos = _call(tokens, pos + 1, dot, scope, closing=")")
        return value, pos + 1
    if token.startswith('"'):
        return bytes(token[1:-1], "utf-8").decode("unicode_escape"), pos + 1
    if token.startswith("`"):
        return token[1:-1], pos + 1
    if token[0].isdigit() or token[0] == "-":
        return (float(token) if "." in token else int(token)), pos + 1
    if token in ("true", "false"):
        return token == "true", pos + 1
    if token == "nil":
        return None, pos + 1
    if token.startswith("$"):
        head, *rest = token.split(".")
        return _field(scope.get(head), rest), pos + 1
    if token.startswith("."):
        return _field(dot, [p for p in token.split(".") if p]), pos + 1
    raise TemplateError(f"unexpected {token!r}")


def _call(tokens: list[str], pos: int, dot: Any, scope: _Scope, closing: str | None = None) -> tuple[Any, int]:
    name = tokens[pos]
    if name in ("and", "or"):
        args, pos = _args(tokens, pos + 1, dot, scope, closing)
        result = args[0]
        for arg in args:
            result = arg
            if _truthy(arg) != (name == "and"):
                break
        return result, pos
    if name in _FUNCS:
        args, pos = _args(tokens, pos + 1, dot, scope, closing)
        try:
            return _FUNCS[name](*args), pos
        except (TypeError, IndexError, KeyError) as exc:
            raise TemplateError(f"{name}: {exc}") from None
    if name[0].isalpha() and name not in ("true", "false", "nil"):
        raise TemplateError(f"the template calls `{name}`, a function parity checking does not evaluate")
    return _operand(tokens, pos, dot, scope)


def _args(tokens, pos, dot, scope, closing) -> tuple[list[Any], int]:
    args = []
    while pos < len(tokens) and tokens[pos] != closing:
        value, pos = _operand(tokens, pos, dot, scope)
        args.append(value)
    return args, pos


def _evaluate(tokens: list[str], dot: Any, scope: _Scope) -> tuple[Any, bool]:
    """(value, printable): declarations and assignments print nothing."""
    if len(tokens) >= 2 and tokens[0].startswith("$") and tokens[1] in (":=", "="):
        value, _ = _call(tokens, 2, dot, scope)
        if tokens[1] == ":=":
            scope.frames[-1][tokens[0]] = value
        else:
            scope.set(tokens[0], value)
        return None, False
    value, _ = _call(tokens, 0, dot, scope)
    return value, True


def _render(nodes: list[_Node], dot: Any, scope: _Scope, out: list[str]) -> None:
    for node in nodes:
        if node.kind == "text":
            out.append(node.text)
        elif node.kind == "print":
            value, printable = _evaluate(node.expr, dot, scope)
            if printable:
                out.append("<no value>" if value is None else str(value).lower() if isinstance(value, bool) else str(value))
        elif node.kind == "if":
            for cond, body in node.branches:
                if _truthy(_evaluate(cond, dot, scope)[0]):
                    scope.frames.append({})
                    _render(body, dot, scope, out)
                    scope.frames.pop()
                    break
            else:
                scope.frames.append({})
                _render(node.else_body, dot, scope, out)
                scope.frames.pop()
        elif node.kind == "range":
            expr, body = node.branches[0]
            items = _evaluate(expr, dot, scope)[0] or []
            for i, item in enumerate(items):
                frame: dict[str, Any] = {}
                if len(node.names) == 1:
                    frame[node.names[0]] = item
                elif len(node.names) == 2:
                    frame[node.names[0]], frame[node.names[1]] = i, item
                scope.frames.append(frame)
                _render(body, item, scope, out)
                scope.frames.pop()
            if not items:
                _render(node.else_body, dot, scope, out)


def render(template: str, data: dict[str, Any]) -> str:
    """Render `template` with `data` (e.g. {"Messages": [{"Role": ..., "Content": ...}], "System": ...})."""
    nodes, _, _ = _parse(_lex(template), 0, ())
    out: list[str] = []
    _render(nodes, data, _Scope(data), out)
    return "".join(out)


__all__ = ["render"]
