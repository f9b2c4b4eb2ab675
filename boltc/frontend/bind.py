"""Binding a call's arguments to a declared signature, and converting each value to plain Python.

Each construct of the language (`fc(...)`, `adam(...)`, `synthetic(...)`...) declares its parameters
as a tuple of `Param`; `bind` matches positional and keyword arguments against it and reports every
mistake at the exact argument (unknown option, missing value, wrong type), in words a user knows.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Callable

from boltc.frontend import ast
from boltc.ir import Loc, Tunable

REQUIRED = object()


class Problem(Exception):
    """A user mistake found while building; collected by the builder into a BoltErrorGroup."""

    def __init__(self, message: str, loc: Loc):
        super().__init__(message)
        self.message = message
        self.loc = loc


Converter = Callable[[ast.Value], Any]


@dataclass(frozen=True)
class Param:
    name: str
    convert: Converter
    default: Any = REQUIRED
    positional: bool = False      # may be given by position (in declaration order)
    alias: str | None = None      # a second accepted keyword (e.g. dwta's `bits` for `range`)


def did_you_mean(word: str, choices) -> str:
    """'; did you mean X?' when one choice is close to `word` (a typo), else ''."""
    near = difflib.get_close_matches(word, [c for c in choices if c], n=1, cutoff=0.7)
    return f" (did you mean '{near[0]}'?)" if near else ""


def one_of_words(words) -> str:
    words = list(words)
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]


# ---- converters: ast value -> python value, or raise Problem at the value ----

def integer(low: int | None = None, high: int | None = None, what: str = "a whole number") -> Converter:
    def conv(v):
        if not isinstance(v, ast.Number) or not isinstance(v.value, int):
            raise Problem(f"expected {what}, found {ast.describe(v)}", v.loc)
        if low is not None and v.value < low:
            raise Problem(f"expected {what} >= {low}, found {v.text}", v.loc)
        if high is not None and v.value > high:
            raise Problem(f"expected {what} <= {high}, found {v.text}", v.loc)
        return v.value
    return conv


def real(low: float | None = None, high: float | None = None, low_open: bool = False,
         what: str = "a number") -> Converter:
    def conv(v):
        if not isinstance(v, ast.Number):
            raise Problem(f"expected {what}, found {ast.describe(v)}", v.loc)
        x = float(v.value)
        if low is not None and (x < low or (low_open and x == low)):
            bound = f"> {low:g}" if low_open else f">= {low:g}"
            raise Problem(f"expected {what} {bound}, found {v.text}", v.loc)
        if high is not None and x > high:
            raise Problem(f"expected {what} <= {high:g}, found {v.text}", v.loc)
        return x
    return conv


def word(*choices: str, what: str = "") -> Converter:
    def conv(v):
        label = what or one_of_words(choices)
        if not isinstance(v, ast.Name):
            raise Problem(f"expected {label}, found {ast.describe(v)}", v.loc)
        if v.text not in choices:
            raise Problem(f"unknown {what or 'value'} '{v.text}'{did_you_mean(v.text, choices)}; expected "
                          f"{one_of_words(choices)}", v.loc)
        return v.text
    return conv


def boolean(v):
    if isinstance(v, ast.Name) and v.text in ("true", "false"):
        return v.text == "true"
    raise Problem(f"expected true or false, found {ast.describe(v)}", v.loc)


def string(v):
    if not isinstance(v, ast.String):
        raise Problem(f'expected a "string", found {ast.describe(v)}', v.loc)
    return v.value


def reference(v):
    """A name of another value in the model (checked to exist by the validate pass)."""
    if not isinstance(v, ast.Name):
        raise Problem(f"expected the name of an input or layer, found {ast.describe(v)}", v.loc)
    return v.text


# ---- binding ----

def bind(call: ast.Call, params: tuple[Param, ...], what: str, problems: list[Problem]) -> dict[str, Any]:
    """Match `call`'s arguments to `params`; return {name: value}. Mistakes go to `problems`.

    Parameters not given take their default; a missing required one is reported at the call.
    """
    by_name = {p.name: p for p in params}
    aliases = {p.alias: p for p in params if p.alias}
    positional = [p for p in params if p.positional]
    out: dict[str, Any] = {}
    given_at: dict[str, Loc] = {}

    def put(p: Param, value: ast.Value, loc: Loc) -> None:
        if p.name in given_at:
            problems.append(Problem(f"'{p.name}' is given twice in {what}", loc))
            return
        given_at[p.name] = loc
        try:
            out[p.name] = p.convert(value)
        except Problem as e:
            msg = e.message if e.message.startswith("unknown") else f"{p.name} of {what}: {e.message}"
            problems.append(Problem(msg, e.loc))

    if len(call.args) > len(positional):
        first_extra = call.args[len(positional)]
        if positional:
            names = ", ".join(p.name for p in positional)
            msg = f"{what} takes {len(positional)} positional argument(s) ({names}), found {len(call.args)}"
        else:
            msg = f"{what} takes only named options (name=value)"
        problems.append(Problem(msg, first_extra.loc))
    for p, value in zip(positional, call.args):
        put(p, value, value.loc)
    for kw in call.kwargs:
        p = by_name.get(kw.key) or aliases.get(kw.key)
        if p is None:
            known = one_of_words(sorted(by_name)) if by_name else "none"
            hint = did_you_mean(kw.key, list(by_name) + list(aliases))
            problems.append(Problem(f"unknown option '{kw.key}' for {what}{hint}; expected {known}", kw.loc))
            continue
        put(p, kw.value, kw.loc)
    for p in params:
        if p.name not in given_at:
            if p.default is REQUIRED:
                problems.append(Problem(f"{what} needs '{p.name}'", call.loc))
            else:
                out[p.name] = p.default
    return out


def as_call(v: ast.Value) -> ast.Call:
    """A bare word stands for a call with no arguments: `relu` == `relu()`, `adam` == `adam()`."""
    if isinstance(v, ast.Name):
        return ast.Call(v.text, (), (), v.loc)
    if isinstance(v, ast.Call):
        return v
    raise Problem(f"expected a name or a call such as name(...), found {ast.describe(v)}", v.loc)


@dataclass(frozen=True)
class AutoValue:
    """What `tunable` returns for `auto`: the builder replaces it by `default` and records an ir.Tunable."""
    kind: str
    default: Any
    loc: Loc


def tunable(conv: Converter, kind: str, default: Any) -> Converter:
    """`conv`, or `auto`: a value `boltc tune` searches (untuned: `default`)."""
    def convert(v):
        if isinstance(v, ast.Name) and v.text == "auto":
            return AutoValue(kind, default, v.loc)
        return conv(v)
    return convert


def take_auto(got: dict, where: tuple, tunables: list) -> dict:
    """`got` with every AutoValue replaced by its default, each recorded in `tunables` at `where + (key,)`."""
    out = {}
    for k, v in got.items():
        if isinstance(v, AutoValue):
            tunables.append(Tunable(where + (k,), v.kind, v.default, v.loc))
            v = v.default
        out[k] = v
    return out
