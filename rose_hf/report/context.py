"""What every report section needs about one selection run, read once: scores, the valid rows, the selection, the
sources, and per checkpoint its weight plus what featurization recorded (`layout.json` + `meta.json`)."""

from __future__ import annotations

import json
import os
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
        self.pool_sources: list[str] | None = None
        self.selected_sources: list[str] | None = None
        if column and pool is not None and column in pool.column_names:
            self.pool_sources = [str(s) for s in pool[column]]
            self.selected_sources = [self.pool_sources[i] for i in self.selected]
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
