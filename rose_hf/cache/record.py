"""The one record-compare-refuse helper of every cached stage (kronfluence's `_save_arguments`).

A stage records the key it ran with (`rose_hf.cache.keys`) as JSON next to its artifacts. On the next start it
compares: the same key means its artifacts can be reused; a different one is either refused
(`CacheMismatchError`, naming each differing field with its recorded and current value, and the fix) or, where the
stage allows it (`overwrite=True`, or a checkpoint recomputed for a new model state), answered by discarding the old
artifacts. Nothing is ever reused on a partial match.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from ..errors import CacheMismatchError
from .io import atomic_write_json, jsonable, read_json

# Keys whose default changed: what to tell a user whose cache was written without the field (recorded None or absent).
DEFAULT_CHANGES = {
    "prefilter_fraction": " This cache was written without the first stage, which `prefilter_fraction` turns on by "
    "default: set `prefilter_fraction=None` to reuse it as it is.",
}


class StageRecord:
    """The recorded key of one cached stage.

    Args:
        path: the JSON file that holds the key.
        stage: the stage in words, for messages (e.g. "the feature cache in out/selection").
        section: the key lives under this field of the JSON file (e.g. `selection.json`'s `"args"`), not the whole file.
        ignore: fields recorded for the report but not compared.
        defaults: the value of a field that a record written before the field existed lacks.
    """

    def __init__(
        self, path: str, stage: str, section: str | None = None, ignore: Iterable[str] = (),
        defaults: dict[str, Any] | None = None,
    ):  # fmt: skip
        self.path = path
        self.stage = stage
        self.section = section
        self.ignore = frozenset(ignore)
        self.defaults = dict(defaults or {})

    def read(self) -> dict[str, Any] | None:
        """The recorded key, or None when the stage has none yet."""
        if not os.path.exists(self.path):
            return None
        payload = read_json(self.path)
        return payload.get(self.section) if self.section is not None else payload

    def differing(self, key: dict[str, Any], fields: Iterable[str] | None = None) -> list[str] | None:
        """The fields whose recorded value differs from `key`'s (all fields of either, or only `fields`); None when
        nothing is recorded."""
        recorded = self.read()
        if recorded is None:
            return None
        current = jsonable(key)
        names = set(fields) if fields is not None else (set(recorded) | set(current)) - self.ignore
        return [name for name in sorted(names) if self._recorded(recorded, name) != current.get(name)]

    def _recorded(self, recorded: dict[str, Any], name: str) -> Any:
        return recorded.get(name, self.defaults.get(name))

    def check(self, key: dict[str, Any], overwrite: bool, fix: str, fields: Iterable[str] | None = None) -> list[str]:
        """Compare `key` with the record: the differing fields (`[]` when the same or not recorded). Raises
        `CacheMismatchError` on a difference unless `overwrite` (the caller then discards the old artifacts)."""
        differing = self.differing(key, fields) or []
        if differing and not overwrite:
            recorded, current = self.read() or {}, jsonable(key)
            details = "; ".join(
                f"{name}: recorded {_short(self._recorded(recorded, name))}, now {_short(current.get(name))}"
                for name in differing
            )
            notes = "".join(DEFAULT_CHANGES[name] for name in differing
                            if name in DEFAULT_CHANGES and self._recorded(recorded, name) is None)  # fmt: skip
            raise CacheMismatchError(f"{self.stage} was written for other inputs ({details}). Fix: {fix}{notes}",
                                     differing)  # fmt: skip
        return differing

    def write(self, key: dict[str, Any]) -> None:
        """Record `key` (main process); atomic, so a reader sees the old record or the new one."""
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        if self.section is None:
            atomic_write_json(self.path, jsonable(key))
        else:
            payload = read_json(self.path) if os.path.exists(self.path) else {}
            atomic_write_json(self.path, {**payload, self.section: jsonable(key)})


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
