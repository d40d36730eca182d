"""Search expressions over runs, parsed by a small grammar into SQLAlchemy expressions.

Nothing of an expression is ever pasted into SQL: names and values become bound parameters of
statements built from the ORM's columns. A malformed expression raises :class:`InvalidInput`
naming the offending token and its position. Grammar (keywords case-insensitive)::

    filter     := or_expr
    or_expr    := and_expr ("or" and_expr)*
    and_expr   := atom ("and" atom)*
    atom       := "(" or_expr ")" | field op value
    field      := ("metrics" | "params" | "tags") "." key | ["attributes" "."] attribute
    key        := [A-Za-z0-9_][A-Za-z0-9_.-/]*  |  `any key in backticks`
    attribute  := id | name | status | job_id | experiment | started_at | ended_at
    op         := "=" | "!=" | "<" | "<=" | ">" | ">=" | "like"
    value      := number | 'text' | "text"
    order_by   := field ["asc" | "desc"] ("," field ["asc" | "desc"])*

``metrics.k`` compares the key's latest value (a number); ``params.k`` and ``tags.k`` compare
text (a number given for them is compared as the text it was written as). A run without the
key does not match. Ordering by a metric puts runs without it last.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, and_, exists, or_, select
from sqlalchemy.orm import aliased
from sqlalchemy.sql.elements import UnaryExpression

from underlay.errors import InvalidInput
from underlay.ml.models import Experiment, LatestMetric, Run, RunParam, RunTag

_TOKEN = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<op><=|>=|!=|<>|==|=|<|>)
  | (?P<lparen>\()
  | (?P<rparen>\))
  | (?P<comma>,)
  | (?P<number>[-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?))
  | (?P<string>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")
  | (?P<field>(?:metrics|params|tags|attributes)\.(?:`[^`]{1,250}`|[A-Za-z0-9_][A-Za-z0-9_.\-/]*)
        |[A-Za-z_][A-Za-z0-9_]*)
    """,
    re.VERBOSE | re.IGNORECASE,
)
_ATTRIBUTES = {
    "id": Run.id,
    "name": Run.name,
    "status": Run.status,
    "job_id": Run.job_id,
    "started_at": Run.started_at,
    "ended_at": Run.ended_at,
}
_KEYWORDS = {"and", "or", "like", "asc", "desc"}
_OPS = {"=": "=", "==": "=", "!=": "!=", "<>": "!=", "<": "<", "<=": "<=", ">": ">", ">=": ">="}
MAX_TERMS = 100
# an alias: the query a condition goes into may join the experiments table itself
_EXPERIMENT = aliased(Experiment)


@dataclass(frozen=True)
class Token:
    kind: str
    text: str
    pos: int


@dataclass(frozen=True)
class Field:
    kind: str  # metrics | params | tags | attributes
    key: str
    token: Token


def tokenize(text: str, what: str = "filter") -> list[Token]:
    tokens: list[Token] = []
    pos = 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:
            raise _bad(what, Token("char", text[pos], pos), "is not allowed here")
        kind = match.lastgroup or ""
        if kind != "ws":
            word = match.group()
            if kind == "field" and word.lower() in _KEYWORDS:
                kind = word.lower()
            tokens.append(Token(kind, word, pos))
        pos = match.end()
    return tokens


def _bad(what: str, token: Token | None, problem: str) -> InvalidInput:
    if token is None:
        return InvalidInput(f"{what}: the expression ends too early ({problem})", token="")
    return InvalidInput(
        f"{what}: {token.text[:60]!r} at position {token.pos} {problem}",
        token=token.text[:60],
        position=token.pos,
    )


class _Parser:
    def __init__(self, text: str, what: str) -> None:
        self.what = what
        self.tokens = tokenize(text, what)
        self.i = 0
        self.terms = 0

    def peek(self) -> Token | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def take(self, *kinds: str, problem: str) -> Token:
        token = self.peek()
        if token is None or token.kind not in kinds:
            raise _bad(self.what, token, problem)
        self.i += 1
        return token

    def done(self) -> None:
        token = self.peek()
        if token is not None:
            raise _bad(self.what, token, "is unexpected: expected 'and', 'or' or the end")

    # filter ---------------------------------------------------------------------------

    def or_expr(self) -> ColumnElement[bool]:
        parts = [self.and_expr()]
        while (token := self.peek()) is not None and token.kind == "or":
            self.i += 1
            parts.append(self.and_expr())
        return parts[0] if len(parts) == 1 else or_(*parts)

    def and_expr(self) -> ColumnElement[bool]:
        parts = [self.atom()]
        while (token := self.peek()) is not None and token.kind == "and":
            self.i += 1
            parts.append(self.atom())
        return parts[0] if len(parts) == 1 else and_(*parts)

    def atom(self) -> ColumnElement[bool]:
        token = self.peek()
        if token is not None and token.kind == "lparen":
            self.i += 1
            inner = self.or_expr()
            self.take("rparen", problem="is unexpected: expected ')'")
            return inner
        self.terms += 1
        if self.terms > MAX_TERMS:
            raise _bad(self.what, token, f"is one comparison too many (at most {MAX_TERMS})")
        field = self.field()
        op_token = self.take("op", "like", problem="is not a comparison (= != < <= > >= like)")
        op = "like" if op_token.kind == "like" else _OPS[op_token.text]
        value = self.take("number", "string", problem="is not a value (a number or 'text')")
        return _compare(self.what, field, op, op_token, value)

    def field(self) -> Field:
        token = self.take(
            "field", problem="is not a field (metrics.KEY, params.KEY, tags.KEY or an attribute)"
        )
        head, dot, key = token.text.partition(".")
        if not dot:
            head, key = "attributes", token.text
        head = head.lower()
        if key.startswith("`"):
            key = key[1:-1]
        if head == "attributes" and key.lower() not in {*_ATTRIBUTES, "experiment"}:
            raise _bad(
                self.what,
                token,
                "is not a run attribute (id, name, status, job_id, experiment, started_at, "
                "ended_at)",
            )
        return Field(head, key.lower() if head == "attributes" else key, token)

    # order by -------------------------------------------------------------------------

    def order_by(self) -> list[UnaryExpression[Any]]:
        clauses = []
        while True:
            field = self.field()
            direction = "asc"
            token = self.peek()
            if token is not None and token.kind in ("asc", "desc"):
                direction = token.kind
                self.i += 1
            clauses.append(_order(field, direction))
            token = self.peek()
            if token is None:
                return clauses
            self.take("comma", problem="is unexpected: expected ',', 'asc', 'desc' or the end")


def _literal(token: Token) -> str | float:
    if token.kind == "number":
        return float(token.text)
    body = token.text[1:-1]
    return re.sub(r"\\(.)", r"\1", body)


def _apply(column: Any, op: str, value: Any) -> ColumnElement[bool]:
    if op == "=":
        return column == value  # type: ignore[no-any-return]
    if op == "!=":
        return column != value  # type: ignore[no-any-return]
    if op == "<":
        return column < value  # type: ignore[no-any-return]
    if op == "<=":
        return column <= value  # type: ignore[no-any-return]
    if op == ">":
        return column > value  # type: ignore[no-any-return]
    if op == ">=":
        return column >= value  # type: ignore[no-any-return]
    return column.like(value)  # type: ignore[no-any-return]


def _compare(
    what: str, field: Field, op: str, op_token: Token, value: Token
) -> ColumnElement[bool]:
    literal = _literal(value)
    if field.kind == "metrics":
        if not isinstance(literal, float):
            raise _bad(what, value, f"is text: metrics.{field.key} compares with a number")
        if op == "like":
            raise _bad(what, op_token, "cannot compare a metric: use = != < <= > >=")
        return exists(
            select(LatestMetric.run_id).where(
                LatestMetric.run_id == Run.id,
                LatestMetric.key == field.key,
                _apply(LatestMetric.value, op, literal),
            )
        )
    if field.kind in ("params", "tags"):
        model = RunParam if field.kind == "params" else RunTag
        text = value.text if value.kind == "number" else str(literal)
        return exists(
            select(model.run_id).where(
                model.run_id == Run.id, model.key == field.key, _apply(model.value, op, text)
            )
        )
    if field.key == "experiment":
        return exists(
            select(_EXPERIMENT.id).where(
                _EXPERIMENT.id == Run.experiment_id, _apply(_EXPERIMENT.name, op, str(literal))
            )
        )
    column = _ATTRIBUTES[field.key]
    if field.key in ("id", "job_id", "started_at", "ended_at") and op == "like":
        raise _bad(what, op_token, f"cannot compare {field.key}: use = != < <= > >=")
    if field.key in ("id", "job_id"):
        if not isinstance(literal, float) or literal != int(literal) or abs(literal) > 2**62:
            raise _bad(what, value, f"is not a whole number: {field.key} is one")
        return _apply(column, op, int(literal))
    if field.key in ("started_at", "ended_at"):
        return _apply(column, op, _moment(what, value, literal))
    if isinstance(literal, float):
        return _apply(column, op, value.text)
    return _apply(column, op, literal)


def _moment(what: str, token: Token, literal: str | float) -> dt.datetime:
    """An ISO 8601 date or time (UTC unless it says otherwise)."""
    try:
        if isinstance(literal, float):
            raise ValueError
        moment = dt.datetime.fromisoformat(literal)
    except ValueError:
        raise _bad(what, token, "is not an ISO 8601 time ('2026-12-06T19:00:00')") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def _order(field: Field, direction: str) -> UnaryExpression[Any]:
    column: Any
    if field.kind == "metrics":
        column = (
            select(LatestMetric.value)
            .where(LatestMetric.run_id == Run.id, LatestMetric.key == field.key)
            .scalar_subquery()
        )
    elif field.kind in ("params", "tags"):
        model = RunParam if field.kind == "params" else RunTag
        column = (
            select(model.value)
            .where(model.run_id == Run.id, model.key == field.key)
            .scalar_subquery()
        )
    elif field.key == "experiment":
        column = (
            select(_EXPERIMENT.name).where(_EXPERIMENT.id == Run.experiment_id).scalar_subquery()
        )
    else:
        column = _ATTRIBUTES[field.key]
    ordered = column.desc() if direction == "desc" else column.asc()
    return ordered.nulls_last()  # type: ignore[no-any-return]


def parse_filter(text: str) -> ColumnElement[bool] | None:
    """The filter as a condition on :class:`Run` rows (None for an empty filter)."""
    if not text.strip():
        return None
    parser = _Parser(text, "filter")
    condition = parser.or_expr()
    parser.done()
    return condition


def parse_order_by(text: str) -> list[UnaryExpression[Any]]:
    """``metrics.acc desc, params.lr`` as ORDER BY clauses (runs without the key last)."""
    if not text.strip():
        return []
    return _Parser(text, "order_by").order_by()
