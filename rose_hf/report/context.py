"""What every report section needs about one selection run, read once: scores, the valid rows, the selection, the
sources, and per checkpoint its weight plus what featurization recorded (`layout.json` + `meta.json`)."""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
from datasets import Dataset

from ..cache.io import disk_errors
from ..cache.store import FeatureStore
from ..rose_config import RoseConfig
from ..scoring.budget import selectable_rows
from ..scoring.selection import SelectionResult
from .plots import save_figure

PLOT_DIR = "report"


class SourceColumn:
    """A pool's source labels as integer codes into their few distinct names (`str` of each value).

    A pool of a million rows has a handful of sources: this keeps one code per row instead of a million Python
    strings, and reads the column in Arrow rather than row by row.

    Args:
        names: the distinct labels.
        codes: `(N,)` index into `names` of each row.
    """

    def __init__(self, names: Sequence[str], codes: np.ndarray):
        self.names, self.codes = list(names), np.asarray(codes, dtype=np.int64)

    @classmethod
    def of(cls, dataset: Dataset, column: str) -> SourceColumn:
        import pyarrow as pa
        import pyarrow.compute as pc

        values = dataset.select_columns([column]).with_format("arrow")[:][column]
        try:
            encoded = pc.dictionary_encode(values.combine_chunks(), null_encoding="encode")
        except (pa.ArrowNotImplementedError, pa.ArrowInvalid, pa.ArrowTypeError):  # e.g. list values: no dictionary
            labels = [str(value) for value in dataset[column][:]]
            names = list(dict.fromkeys(labels))
            index = {name: i for i, name in enumerate(names)}
            return cls(names, np.fromiter((index[label] for label in labels), np.int64, len(labels)))
        labels = [str(value) for value in encoded.dictionary.to_pylist()]
        names = list(dict.fromkeys(labels))  # two values may print alike
        remap = np.asarray([names.index(label) for label in labels], dtype=np.int64)
        return cls(names, remap[encoded.indices.to_numpy(zero_copy_only=False)] if len(remap) else remap)

    def __len__(self) -> int:
        return len(self.codes)

    def __getitem__(self, row: int) -> str:
        return self.names[self.codes[row]]

    def counts(self, rows: np.ndarray | None = None) -> Counter:
        """Rows per source (of `rows` when given)."""
        codes = self.codes if rows is None else self.codes[np.asarray(rows, dtype=np.int64)]
        found = np.bincount(codes, minlength=len(self.names))
        return Counter({name: int(n) for name, n in zip(self.names, found) if n})

    def names_of(self, rows: np.ndarray) -> list[str]:
        return [self.names[code] for code in self.codes[np.asarray(rows, dtype=np.int64)]]


class ReportContext:
    """Everything the sections need, computed once; `image` saves a section's figure and records its link."""

    def __init__(
        self,
        output_dir: str,
        pool: Dataset | None,
        selected_rows: Dataset | None,
        result: SelectionResult,
        config: RoseConfig,
        store: FeatureStore | None,
    ):
        self.output_dir = output_dir
        self.plot_dir = os.path.join(output_dir, PLOT_DIR)
        self.pool = pool
        self.result = result
        self.config = config
        self.info = result.info or {}
        self.scores = np.asarray(result.scores, dtype=np.float32)
        self.num_pool = int(self.scores.shape[0])
        if pool is not None and len(pool) != self.num_pool:
            raise ValueError(
                f"The pool has {len(pool)} rows but the selection scored {self.num_pool}: pass the pool the selection "
                "was computed for (or no pool)."
            )
        # `select_top`'s own rule, so the report's valid rows are exactly the ones the selection could pick.
        self.valid = selectable_rows(self.scores, np.asarray(result.valid, dtype=bool))
        self.selected = np.asarray(result.selected_indices, dtype=np.int64)
        if selected_rows is None and pool is not None:
            selected_rows = pool.select(self.selected.tolist())
        if selected_rows is not None and len(selected_rows) != len(self.selected):
            raise ValueError(
                f"`selected/` holds {len(selected_rows)} rows but `selected_indices.json` lists {len(self.selected)}: "
                "the run folder is inconsistent; rerun the selection."
            )
        self.selected_rows = selected_rows
        column = config.source_column
        self.pool_sources: SourceColumn | None = None
        self.selected_sources: list[str] | None = None
        if column and pool is not None and column in pool.column_names:
            self.pool_sources = SourceColumn.of(pool, column)
            self.selected_sources = self.pool_sources.names_of(self.selected)
        elif column and selected_rows is not None and column in selected_rows.column_names:
            self.selected_sources = [str(s) for s in selected_rows[column]]
        self.checkpoints = self._checkpoint_rows(store)
        self.images: list[str] = []

    def _checkpoint_rows(self, store: FeatureStore | None) -> list[dict[str, Any]]:
        metas: dict[int, dict[str, Any]] = {}
        if store is not None:
            metas = {c.step: c.meta for c in store.completed_checkpoints() if c.step in set(self.result.steps)}
        rows = []
        for step, weight in zip(self.result.steps, np.asarray(self.result.weights, dtype=np.float64)):
            meta = metas.get(int(step), {})
            rates = meta.get("learning_rates") or []
            rows.append(
                {
                    "step": int(step),
                    "weight": float(weight),
                    "num_rates": len(rates),
                    "mean_lr": float(np.mean(rates)) if rates else None,
                    "meta": meta,
                }
            )
        return rows

    def recorded(self, key: str) -> list[Any]:
        """The distinct values of `key` the checkpoints recorded (one in any consistent run), in checkpoint order."""
        seen: dict[str, Any] = {}
        for row in self.checkpoints:
            if key in row["meta"]:
                seen.setdefault(json.dumps(row["meta"][key], sort_keys=True, default=str), row["meta"][key])
        return list(seen.values())

    def image(self, figure, name: str, alt: str) -> str:
        """Save `figure` as `report/<name>` and return its markdown link."""
        path = os.path.join(self.plot_dir, name)
        with disk_errors(path):
            save_figure(figure, path)
        link = f"{PLOT_DIR}/{name}"
        self.images.append(link)
        return f"![{alt}]({link})"
