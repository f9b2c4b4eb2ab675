"""Fuzz: seeded random mutations of valid .bolt files (delete, duplicate or swap tokens and
characters). Every mutant must either check and plan cleanly or raise the project's own error type
with a file:line:column location, never anything else."""
import random
import re
from pathlib import Path

import pytest

from boltc.commands.check import check_source
from boltc.errors import BoltError, BoltErrorGroup
from boltc.passes.to_plan import to_plan

ROOT = Path(__file__).parents[1]
LANGUAGE_EXAMPLE = re.search(r"```\n(model everything.*?)```", (ROOT / "docs" / "language.md").read_text(), re.S)
# every model, plus the language reference's example, which holds every construct of the language
SOURCES = {p.stem: p.read_text() for p in sorted((ROOT / "models").glob("*.bolt"))}
SOURCES["language_reference"] = LANGUAGE_EXAMPLE.group(1)
TOKEN = re.compile(r'"(?:[^"\\\n]|\\.)*"|[A-Za-z_][A-Za-z0-9_]*|[0-9.eE+-]+|\S')
MUTANTS_PER_FILE = 300
LARK_WORDS = re.compile(r"\b(RPAR|LPAR|RBRACE|LBRACE|NAME|SIGNED_NUMBER|INT|STRING|COMMA|EQUAL|COLON|AT)\b|\$END|__ANON")


def mutate(text: str, rng: random.Random) -> str:
    kind = rng.randrange(6)
    if kind < 3:                                   # token level: delete, duplicate, swap
        spans = [m.span() for m in TOKEN.finditer(text)]
        i, j = rng.randrange(len(spans)), rng.randrange(len(spans))
        (a, b), (c, d) = sorted([spans[i], spans[j]])
        if kind == 0:
            return text[:a] + text[b:]
        if kind == 1:
            return text[:b] + " " + text[a:b] + text[b:]
        if (a, b) == (c, d) or b > c:
            return text
        return text[:a] + text[c:d] + text[b:c] + text[a:b] + text[d:]
    i, j = sorted((rng.randrange(len(text)), rng.randrange(len(text))))
    if kind == 3:                                  # character level
        return text[:i] + text[i + 1:]
    if kind == 4:
        return text[:i] + text[i] + text[i:]
    return text[:i] + text[j] + text[i + 1:j] + text[i] + text[j + 1:]


def outcome(text: str, file: str) -> str:
    try:
        graph = check_source(text, file)
        to_plan(graph)
        return "ok"
    except BoltError as e:
        errors = e.errors if isinstance(e, BoltErrorGroup) else [e]
        for err in errors:
            loc = err.location
            assert loc is not None and loc.file == file and loc.line >= 1, err.render()
            assert err.render().startswith(f"{file}:{loc.line}"), err.render()
            unquoted = re.sub(r"'[^']*'|\"[^\"]*\"", "", err.message)     # what the user wrote may be anything
            assert not LARK_WORDS.search(unquoted), err.message         # the rest is in words, not lark's
        return type(errors[0]).__name__


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_mutants_parse_or_raise_located_bolt_errors(name):
    rng = random.Random(f"fuzz:{name}")
    text = SOURCES[name]
    seen = {}
    for _ in range(MUTANTS_PER_FILE):
        mutant = mutate(text, rng)
        try:
            result = outcome(mutant, "fuzz.bolt")
        except AssertionError:
            raise
        except Exception as e:  # noqa: BLE001            # anything else is a bug in boltc: show the input that caused it
            raise AssertionError(f"{type(e).__name__}: {e}\n--- mutant ---\n{mutant}") from e
        seen[result] = seen.get(result, 0) + 1
    # the mutations must exercise both the parser and the checks behind it
    assert seen.get("BoltSyntaxError", 0) > 0 and seen.get("BoltValidationError", 0) > 0, seen
