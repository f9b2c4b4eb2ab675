"""The syntax tree of a .bolt file: plain frozen dataclasses, one per shape in grammar/bolt.lark.

Every node carries its `Loc` (line, column of its first character) so that the builder can point at
the exact word a user got wrong.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Union

from boltc.ir import Loc


@dataclass(frozen=True)
class Name:
    text: str
    loc: Loc


@dataclass(frozen=True)
class Number:
    value: Union[int, float]
    text: str
    loc: Loc


@dataclass(frozen=True)
class String:
    value: str
    loc: Loc


@dataclass(frozen=True)
class AtK:
    """`precision@5`"""
    name: str
    k: int
    loc: Loc


@dataclass(frozen=True)
class Keyword:
    key: str
    value: "Value"
    loc: Loc            # of the key


@dataclass(frozen=True)
class Call:
    name: str
    args: tuple["Value", ...]
    kwargs: tuple[Keyword, ...]
    loc: Loc


Value = Union[Name, Number, String, AtK, Call]


@dataclass(frozen=True)
class Declare:
    """`input features: sparse(10)` -> keyword 'input', name 'features'."""
    keyword: str
    name: str
    value: Value
    loc: Loc
    name_loc: Loc


@dataclass(frozen=True)
class Assign:
    name: str
    value: Value
    loc: Loc


@dataclass(frozen=True)
class Setting:
    key: str
    values: tuple[Value, ...]
    loc: Loc


@dataclass(frozen=True)
class Section:
    key: str
    body: tuple["Statement", ...]
    loc: Loc


@dataclass(frozen=True)
class Bare:
    call: Call
    loc: Loc


Statement = Union[Declare, Assign, Setting, Section, Bare]


@dataclass(frozen=True)
class Model:
    keyword: str
    name: str
    body: tuple[Statement, ...]
    loc: Loc
    name_loc: Loc


def describe(value: Value) -> str:
    """A value as the user wrote it, for messages."""
    if isinstance(value, Name):
        return value.text
    if isinstance(value, Number):
        return value.text
    if isinstance(value, String):
        return '"' + value.value + '"'
    if isinstance(value, AtK):
        return f"{value.name}@{value.k}"
    return f"{value.name}(...)"
