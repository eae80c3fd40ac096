"""One way to turn configuration dataclasses into JSON-ready dicts and back.

Every configuration saved beside a run (prior, forward field, avatar, training) round-trips
through :class:`DictConfig`, so a misspelt or stale field in a ``config.json`` fails loudly with
the file and field named instead of being silently dropped.
"""
from __future__ import annotations

import dataclasses
from typing import Any


class DictConfig:
    """Mixin for ``@dataclass`` configurations: ``to_dict`` / ``from_dict``."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str | None = None):
        """Build from a dict; ValueError naming ``source`` (a file) and any unknown field."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            where = f"{source}: " if source else ""
            raise ValueError(f"{where}unknown {cls.__name__} fields: {unknown}")
        # JSON has no tuples: restore them so configs compare equal after a round trip.
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})
