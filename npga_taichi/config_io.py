"""One way to turn configuration dataclasses into JSON-ready dicts and back.

Every configuration saved beside a run (prior, forward field, avatar, training) round-trips
through :class:`DictConfig`, so a misspelt or stale field in a ``config.json`` fails loudly with
the file and field named instead of being silently dropped.
"""
from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import io
import textwrap
import tokenize
from typing import Any, ClassVar


class DictConfig:
    """Mixin for ``@dataclass`` configurations: ``to_dict`` / ``from_dict``.

    ``SAVED_BEFORE``: fields whose default changed the behaviour, each with the value a run saved
    without the field had; :meth:`from_dict` fills them from here, not from today's default, so an
    older run loads (and resumes) as it was trained."""

    SAVED_BEFORE: ClassVar[dict[str, Any]] = {}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str | None = None):
        """Build from a dict; ValueError naming ``source`` (a file) and any unknown field."""
        data = {**cls.SAVED_BEFORE, **data}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            where = f"{source}: " if source else ""
            raise ValueError(f"{where}unknown {cls.__name__} fields: {unknown}")
        # JSON has no tuples: restore them so configs compare equal after a round trip.
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


@functools.lru_cache(maxsize=None)
def field_help(cls: type) -> dict[str, str]:
    """Each field's help text: the ``# comment`` after it in the class body.

    The dataclass is the one place that holds a field, its default and its meaning; command-line
    options are generated from it (``npga_taichi.cli.options``), so help cannot drift from code.
    """
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    names = {f.name for f in dataclasses.fields(cls)}
    helps: dict[str, str] = {}
    line_field: dict[int, str] = {}
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.target.id in names:
            line_field[node.lineno] = node.target.id
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT and tok.start[0] in line_field:
            helps[line_field[tok.start[0]]] = tok.string.lstrip("#").strip()
    return helps
