"""Python blocks: executed statement by statement in their page's namespace (blocks of one page
run in order, as a reader would type them), with a few names the docs may assume predefined.

A trailing comment is an expectation when it can be one: `expr  # ['a', 'b']` (a literal: the
value must equal it), `x = f()  # list[int]` or `# PadToken(...)` (a type: the value must be
one). A statement whose value is an HTTP response must be a 2xx. Other comments are prose.
"""

from __future__ import annotations

import ast
import builtins
import contextlib
import dataclasses
import io
import tokenize
import typing
from typing import Any, Callable
from unittest import mock

# Entry points too slow for the test suite. Only a block marked `skip (reason)` runs with them
# replaced by a stub that checks the arguments against the real signature and returns a
# placeholder of the real result type (so attribute typos still fail).
HEAVY = {"tunesmith.train.sft.run": "trains a model"}


class Placeholder:
    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return f"<{self.name}>"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return repr(self)


def _stub(dotted: str, real: Callable, calls: list[str]) -> Callable:
    import inspect

    hints = typing.get_type_hints(real)

    def stub(*args, **kwargs):
        bound = inspect.signature(real).bind(*args, **kwargs)
        for name, value in bound.arguments.items():
            hint = hints.get(name)
            if isinstance(hint, type) and not isinstance(value, hint):
                raise TypeError(f"{dotted}: {name} must be a {hint.__name__}, got {type(value).__name__}")
        calls.append(dotted)
        result = hints.get("return")
        if dataclasses.is_dataclass(result):
            return result(**{f.name: Placeholder(f.name) for f in dataclasses.fields(result) if f.init})
        return Placeholder(dotted)

    return stub


@contextlib.contextmanager
def heavy_stubbed(calls: list[str]):
    import importlib

    with contextlib.ExitStack() as stack:
        for dotted in HEAVY:
            module_name, _, attr = dotted.rpartition(".")
            module = importlib.import_module(module_name)
            stack.enter_context(mock.patch.object(module, attr, _stub(dotted, getattr(module, attr), calls)))
        yield


def free_names(source: str) -> set[str]:
    """Names a block reads without assigning or importing them (and that are not builtins)."""
    tree = ast.parse(source)
    bound, read = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            (read if isinstance(node.ctx, ast.Load) else bound).add(node.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            bound |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            bound.add(node.name)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
    return read - bound - set(dir(builtins))


def _comments(source: str) -> dict[int, str]:
    out = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            out[tok.start[0]] = tok.string[1:].strip()
    return out


def _check_expectation(value: Any, comment: str, line: int) -> None:
    try:
        expected = ast.literal_eval(comment)
    except (ValueError, SyntaxError):
        expected = ...
    if expected is not ...:
        assert value == expected, f"line {line}: the docs say {comment}, the code gives {value!r}"
        return
    head = comment.split("(")[0].split("[")[0].strip()
    if not head.isidentifier():
        return
    cls = getattr(builtins, head, None) if head in ("list", "str", "dict", "int", "tuple", "bool", "float") else None
    if cls is not None:
        assert isinstance(value, cls), f"line {line}: the docs say {comment}, the code gives a {type(value).__name__}"
        if comment == "list[int]":
            assert all(isinstance(v, int) for v in value), f"line {line}: not a list of ints: {value!r}"
    elif head[0].isupper():
        given = type(value).__name__
        assert given == head, f"line {line}: the docs say {comment}, the code gives a {given}"


def _check_value(value: Any, line: int) -> None:
    import httpx

    if isinstance(value, httpx.Response):
        assert value.is_success, f"line {line}: HTTP {value.status_code}: {value.text[:300]}"


def execute(source: str, namespace: dict[str, Any]) -> str:
    """Run `source` in `namespace` statement by statement; returns what it printed."""
    tree = ast.parse(source)
    comments = _comments(source)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        for stmt in tree.body:
            line = stmt.end_lineno or stmt.lineno
            if isinstance(stmt, (ast.Expr, ast.Assign)):
                code = compile(ast.Expression(stmt.value), "<doc>", "eval")
                value = eval(code, namespace)
                if isinstance(stmt, ast.Assign):
                    namespace["__value"] = value
                    assign = ast.Assign(stmt.targets, ast.Name("__value", ast.Load()))
                    module = ast.fix_missing_locations(ast.Module([ast.copy_location(assign, stmt)], []))
                    exec(compile(module, "<doc>", "exec"), namespace)
                _check_value(value, line)
                if line in comments:
                    _check_expectation(value, comments[line], line)
            else:
                exec(compile(ast.Module([stmt], []), "<doc>", "exec"), namespace)
    return printed.getvalue()
