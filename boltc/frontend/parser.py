"""Text -> syntax tree (lark LALR + a Transformer), with lark's errors translated into BoltSyntaxError.

Lark's messages name its terminals (`RPAR`, `$END`); users get the words they typed instead
("expected ')' or ','"), at the line and column of the offending character.
"""
from __future__ import annotations

import ast as pyast
import functools
from importlib import resources

import lark
from lark import Lark, Token, Transformer, v_args

from boltc.errors import BoltSyntaxError, Location, source_line
from boltc.frontend import ast
from boltc.ir import Loc

# lark terminal names -> what a user would call them
TOKEN_WORDS = {
    "NAME": "a name", "INT": "a whole number", "SIGNED_NUMBER": "a number", "STRING": 'a "string"',
    "LBRACE": "'{'", "RBRACE": "'}'", "LPAR": "'('", "RPAR": "')'", "COMMA": "','", "EQUAL": "'='",
    "COLON": "':'", "AT": "'@'", "$END": "the end of the file",
}


@functools.lru_cache(maxsize=1)
def _parser() -> Lark:
    text = resources.files("boltc.grammar").joinpath("bolt.lark").read_text(encoding="utf-8")
    # LALR: linear time and deterministic errors; positions for every rule for error locations.
    return Lark(text, parser="lalr", propagate_positions=True, maybe_placeholders=False)


def _loc(tok) -> Loc:
    return Loc(tok.line, tok.column)


@v_args(inline=True)
class ToAst(Transformer):
    """lark tree -> boltc.frontend.ast (locations taken from the first token of each rule)."""

    def start(self, kw, name, body):
        return ast.Model(str(kw), str(name), body, _loc(kw), _loc(name))

    def block(self, *statements):
        return tuple(statements)

    def declare(self, kw, name, value):
        return ast.Declare(str(kw), str(name), value, _loc(kw), _loc(name))

    def assign(self, name, value):
        return ast.Assign(str(name), value, _loc(name))

    def setting(self, key, *values):
        return ast.Setting(str(key), tuple(values), _loc(key))

    def section(self, key, body):
        return ast.Section(str(key), body, _loc(key))

    def bare(self, call):
        return ast.Bare(call, call.loc)

    def at_k(self, name, k):
        return ast.AtK(str(name), int(k), _loc(name))

    def name(self, tok):
        return ast.Name(str(tok), _loc(tok))

    def number(self, tok):
        text = str(tok)
        is_int = all(c.isdigit() or c in "+-" for c in text)
        return ast.Number(int(text) if is_int else float(text), text, _loc(tok))

    def string(self, tok):
        # the grammar only admits "..." with backslash escapes, which Python's literal syntax reads
        try:
            value = pyast.literal_eval(str(tok))
        except (ValueError, SyntaxError):
            raise _BadString(tok) from None
        return ast.String(value, _loc(tok))

    def keyword(self, key, value):
        return ast.Keyword(str(key), value, _loc(key))

    def call(self, name, *arguments):
        args = tuple(a for a in arguments if not isinstance(a, ast.Keyword))
        kwargs = tuple(a for a in arguments if isinstance(a, ast.Keyword))
        return ast.Call(str(name), args, kwargs, _loc(name))


class _BadString(Exception):
    def __init__(self, tok):
        super().__init__(str(tok))
        self.tok = tok


def _error(message: str, text: str, file: str, line: int, column: int) -> BoltSyntaxError:
    return BoltSyntaxError(message, Location(file, line, column), source_line(text, line))


def _unclosed_bracket(text: str, file: str) -> BoltSyntaxError | None:
    """At end of file: the innermost '{' or '(' that was never closed, if any."""
    stack = []
    try:
        tokens = list(_parser().lex(text))
    except lark.exceptions.LarkError:
        return None
    for tok in tokens:
        if tok.type in ("LBRACE", "LPAR"):
            stack.append(tok)
        elif tok.type in ("RBRACE", "RPAR") and stack:
            stack.pop()
    if not stack:
        return None
    tok = stack[-1]
    return _error(f"'{tok}' is never closed (the file ends first)", text, file, tok.line, tok.column)


def _tokens_before(text: str, tok: Token) -> list[Token]:
    try:
        return [t for t in _parser().lex(text) if t.start_pos < tok.start_pos]
    except lark.exceptions.LarkError:
        return []


# the parser state right after the first word of a statement accepts exactly these
_STATEMENT_START = {"EQUAL", "LBRACE", "LPAR", "NAME", "SIGNED_NUMBER", "STRING"}


def _explain_unexpected(text: str, tok: Token, expected: set) -> str | None:
    """A better message for the two commonest slips, where the parser's view is confusing:
    a bracket left open at the end of a line, and a statement word with nothing after it."""
    before = _tokens_before(text, tok)
    if not before or tok.type == "$END":
        return None
    stack = []
    for t in before:
        if t.type in ("LBRACE", "LPAR"):
            stack.append(t)
        elif t.type in ("RBRACE", "RPAR") and stack:
            stack.pop()
    if stack and stack[-1].type == "LPAR" and "RPAR" in expected and tok.line > before[-1].line:
        o = stack[-1]
        return f"expected ')' to close the '(' at line {o.line}, column {o.column}, found {_found(tok)}"
    if expected == _STATEMENT_START and before[-1].type == "NAME":
        return (f"'{before[-1]}' needs a value (statements are `word value`, `name = op(...)`, "
                f"`word name: kind(...)` or `word {{ ... }}`), found {_found(tok)}")
    return None


def _expected_words(expected) -> str:
    words = sorted({TOKEN_WORDS.get(t, t.lower()) for t in expected if not t.startswith("__")})
    if not words:
        return "something else"
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]


def _found(tok: Token) -> str:
    if tok.type == "$END":
        return "the end of the file"
    if tok.type == "STRING":
        return f"the string {tok}"
    return f"'{tok}'"


def parse_tree(text: str, file: str = "<string>") -> ast.Model:
    """Parse .bolt text into the syntax tree. Raises BoltSyntaxError with a location."""
    try:
        tree = _parser().parse(text)
    except lark.exceptions.UnexpectedCharacters as e:
        ch = text[e.pos_in_stream] if e.pos_in_stream < len(text) else "?"
        if ch == '"':
            msg = "this string is never closed (a string ends on its own line)"
        else:
            msg = f"unexpected character '{ch}'" + (" (strings use double quotes)" if ch == "'" else "")
        raise _error(msg, text, file, e.line, e.column) from None
    except lark.exceptions.UnexpectedToken as e:
        if e.token.type == "$END":
            unclosed = _unclosed_bracket(text, file)
            if unclosed is not None:
                raise unclosed from None
            if not text.strip():
                raise _error("empty file: expected `model <name> { ... }`", text, file, 1, 1) from None
        line, column = _token_position(e.token, text)
        # `accepts` (what the parser can really take here) is narrower than `expected` (its table row)
        expected = set(getattr(e, "accepts", None) or e.expected)
        msg = _explain_unexpected(text, e.token, expected) or \
            f"expected {_expected_words(expected)}, found {_found(e.token)}"
        raise _error(msg, text, file, line, column) from None
    except lark.exceptions.UnexpectedEOF as e:
        unclosed = _unclosed_bracket(text, file)
        if unclosed is not None:
            raise unclosed from None
        line, column = _end_position(text)
        raise _error(f"unexpected end of file, expected {_expected_words(e.expected)}",
                     text, file, line, column) from None
    try:
        return ToAst().transform(tree)
    except lark.exceptions.VisitError as e:   # a BoltSyntaxError raised inside the transformer
        if isinstance(e.orig_exc, _BadString):
            tok = e.orig_exc.tok
            raise _error(f"bad escape in the string {tok}", text, file, tok.line, tok.column) from None
        raise


def _end_position(text: str) -> tuple[int, int]:
    stripped = text.rstrip()
    lines = stripped.splitlines() or [""]
    return len(lines), len(lines[-1]) + 1


def _token_position(tok: Token, text: str) -> tuple[int, int]:
    if tok.type == "$END" or getattr(tok, "line", None) is None:
        return _end_position(text)
    return tok.line, tok.column
