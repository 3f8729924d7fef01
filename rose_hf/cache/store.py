"""On-disk feature cache: named, resumable, refusing to mix runs.

Layout under `<output_dir>/`:
```
run.json                          arguments every cached artifact depends on (checked on every start)
features/checkpoint-<step>/
    pool.npy                      (N, d) pool features, memory-mapped, written chunk by chunk
    pool_scales.npy               (N,) float32 row scales (int8 storage only)
    pool_status.npy               (N,) int8: 0 pending, 1 ok, 2 no training target, 3 non-finite gradient
    chunks/<id>.done              completion record of one chunk, written after its rows are flushed
    layout.json                   rows, dim, dtype, chunk size, and the learning rates of the steps that led here
    validation_<objective>.npy    (V, d) float32 validation features, one file per objective (dpo, sft)
    similarities/<objective>-<id>.npy   instead of pool.npy when `store_pool_features=False`: (rows, V) float32
                                  cosine of each of the chunk's rows to each validation pair, per objective
    fingerprint.json              the model state the features are computed from: adapter weights, Adam moments, base
    meta.json                     checkpoint step, counts, timings; written last, marks the checkpoint done
```
A chunk is complete only when its record exists, and the record is written (atomically: temp file + rename) after the
rows are flushed, so a kill at any point leaves at worst a chunk that is recomputed. Every process writes disjoint rows
of the same memory-mapped files; only the main process creates files and writes `meta.json`.

Without stored pool features (`store_pool_features=False`, `layout.json` says `"pool_features": false`), the
validation features are written first and each chunk writes its rows' similarities to every pair, computed from
features rounded as `pool.npy` would hold them (`round_features`), so scoring them gives the stored features' scores.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import CacheWriteError
from .io import atomic_write_json, disk_errors, jsonable, read_json
from .record import StageRecord

STATUS_PENDING, STATUS_OK, STATUS_EMPTY, STATUS_NONFINITE = 0, 1, 2, 3
# The validation features cached at every checkpoint (`validation_<kind>.npy`): the DPO gradient of each pair and the SFT
# gradient of its (prompt, chosen) row. Every `validation_objective` is scored from these.
VALIDATION_FEATURES = ("dpo", "sft")
# numpy storage of each `RoseConfig.feature_dtype`
NUMPY_DTYPES = {"float16": np.float16, "float32": np.float32, "int8": np.int8}
# Per-row side arrays of a checkpoint: the status of each row, and the int8 storage's row scales.
STATUS_DTYPE, SCALE_DTYPE = np.int8, np.float32
# Validation features are stored in float32 whatever `feature_dtype` (they are few).
VALIDATION_DTYPE = np.float32
# Scratch: a pool held in memory is tokenized into `<selection_dir>/tokens/<pool>-<process>.arrow` and memory-mapped
# (`data.prepare_sft_dataset`), rewritten by every run before `overwrite` applies (so not a RUN_ARTIFACT); safe to
# delete once a run has finished.
TOKENS_DIR = "tokens"
# Everything a run writes into its `output_dir` (selection.py, report/): `overwrite` must leave none of it behind.
RUN_ARTIFACTS = (
    "features", "run.json", "scores.npy", "valid.npy", "selected_indices.json", "selected", "selected.jsonl",
    "selection.json", "report.md", "report",
)


def tokens_file(selection_dir: str, name: str = "pool") -> str:
    """This process's scratch file for the tokens of an in-memory pool (one per process: no two write one file)."""
    from accelerate import PartialState

    return os.path.join(selection_dir, TOKENS_DIR, f"{name}-{PartialState().process_index}.arrow")


def check_output_dir(output_dir: str, name: str = "output_dir") -> None:
    """Fail, without creating anything, if `output_dir` could not be created and written.

    The path must be free of NUL bytes, each folder name to create short enough for the filesystem, the path itself
    a folder if it exists, and its nearest existing parent a folder this process may write into. (As root, only a
    read-only filesystem makes a folder unwritable; `check_writable` probes for real when the run starts.)
    """
    if not isinstance(output_dir, str) or not output_dir:
        raise ValueError(f"{name}={output_dir!r} is not a folder path: name a folder for the cache and the selection.")
    if "\0" in output_dir:
        raise ValueError(f"{name}={output_dir!r} contains a NUL byte, which no filesystem accepts: fix the path.")
    path, missing = os.path.abspath(output_dir), []
    while not os.path.lexists(path) and os.path.dirname(path) != path:
        path, child = os.path.dirname(path), os.path.basename(path)
        missing.append(child)
    if not os.path.isdir(path):
        where = "it" if not missing else f"its parent {path!r}"
        raise ValueError(
            f"{name}={output_dir!r} cannot be a folder: {where} is a file (or a broken link). Choose another path."
        )
    try:
        name_max = os.pathconf(path, "PC_NAME_MAX")
    except (OSError, ValueError):
        name_max = 255
    too_long = [child for child in missing if len(os.fsencode(child)) > name_max]
    if too_long:
        raise ValueError(
            f"{name}={output_dir!r}: the folder name {too_long[0][:40]!r}... is "
            f"{len(os.fsencode(too_long[0]))} bytes, over this filesystem's limit of {name_max}: choose a shorter name."
        )
    if not os.access(path, os.W_OK | os.X_OK):
        action = "written into" if not missing else f"used to create {os.path.join(path, *reversed(missing))!r}"
        raise ValueError(
            f"{name}={output_dir!r} is not writable: {path!r} cannot be {action} by this user. Choose a folder you "
            "can write to (or fix its permissions)."
        )


def check_writable(output_dir: str) -> None:
    """Fail before any work if `output_dir` cannot be created or written."""
    try:
        os.makedirs(output_dir, exist_ok=True)
        probe = os.path.join(output_dir, f".rose_write_probe.{os.getpid()}")
        with open(probe, "w") as handle:
            handle.write("ok")
        os.remove(probe)
    except OSError as error:
        raise CacheWriteError(
            f"output_dir={output_dir!r} is not writable ({error.strerror}): choose a folder you can write to."
        ) from error


# `run.json` key of what is recorded for the report but not compared: the warmup's training arguments and base model.
# Those shape each checkpoint's model state, which keys that checkpoint's features (fingerprint.py) instead.
RUN_INFO_KEY = "warmup"
# Settings added after caches and selections were recorded (`rose_hf.cache.keys.FEATURE_SETTINGS`, the config in
# `selection.json`): a record without one reads as this value, the one those runs were computed with, whatever
# today's default (a run from before the first stage existed had none), so they stay valid and report truly.
RECORDED_DEFAULTS = {"store_pool_features": True, "prefilter_fraction": None, "dpo_weight": 0.5}


class FeatureStore:
    """The cache of one selection run.

    Args:
        root: the run's `output_dir`.
        run_args: everything the cached features depend on (`rose_hf.cache.keys.feature_run_key`). A cache
            written with other values is never reused.
        overwrite: delete a cache written with other values instead of refusing.
    """

    def __init__(self, root: str, run_args: dict[str, Any] | None = None, overwrite: bool = False):
        self.root = root
        self.run_args = run_args
        self.overwrite = overwrite
        self.previous_info: dict[str, Any] = {}  # the `RUN_INFO_KEY` record `prepare` found, before writing its own

    @property
    def run_file(self) -> str:
        return os.path.join(self.root, "run.json")

    @property
    def features_dir(self) -> str:
        return os.path.join(self.root, "features")

    @property
    def record(self):
        """The run's recorded key (`run.json`), as every cached stage keeps one (`rose_hf.cache.record`)."""
        return StageRecord(self.run_file, f"The feature cache in {self.root}", ignore={RUN_INFO_KEY},
                           defaults=RECORDED_DEFAULTS)  # fmt: skip

    def prepare(self) -> None:
        """Main process: check or record `run.json`. Raises on a cache of another run unless `overwrite`."""
        check_writable(self.root)
        record, key = self.record, jsonable(self.run_args)
        saved = record.read()
        if saved is not None:
            self.previous_info = saved.get(RUN_INFO_KEY) or {}
            # What this run does not know (e.g. offline selection: no training arguments) stays as recorded.
            info = {k: v for k, v in (key.get(RUN_INFO_KEY) or {}).items() if v is not None}
            if info or self.previous_info:
                key[RUN_INFO_KEY] = {**self.previous_info, **info}
            fix = "set `overwrite=True` to discard it, or choose another `output_dir`." + self.similarities_note()
            if record.check(key, overwrite=self.overwrite, fix=fix):
                self.clear()
        os.makedirs(self.features_dir, exist_ok=True)
        record.write(key)

    def similarities_note(self) -> str:
        """What a cache without pool features cannot do, for the messages that refuse other pairs ('' otherwise)."""
        saved = self.record.read() or {}
        if saved.get("store_pool_features", True):
            return ""
        return (" This cache was computed with `store_pool_features=False`: it holds each pool row's similarities to "
                "the recorded validation pairs, not the pool features, so new pairs need the features computed again "
                "(keep `store_pool_features=True` to rescore with new pairs later).")  # fmt: skip

    def clear(self) -> None:
        """Delete every cached artifact of this run (features, scores, selection)."""
        for name in os.listdir(self.root):
            path = os.path.join(self.root, name)
            if name in RUN_ARTIFACTS:
                shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)

    def checkpoint(self, step: int) -> CheckpointFeatures:
        return CheckpointFeatures(os.path.join(self.features_dir, f"checkpoint-{step}"), step)

    def completed_checkpoints(self) -> list[CheckpointFeatures]:
        """Finished checkpoints, in step order."""
        if not os.path.isdir(self.features_dir):
            return []
        steps = sorted(
            int(name.split("-")[1]) for name in os.listdir(self.features_dir) if name.startswith("checkpoint-")
        )
        return [c for c in (self.checkpoint(step) for step in steps) if c.is_complete()]


class CheckpointFeatures:
    """Features of the pool and the validation set at one warmup checkpoint."""

    def __init__(self, path: str, step: int):
        self.path = path
        self.step = step

    def _file(self, name: str) -> str:
        return os.path.join(self.path, name)

    def is_complete(self) -> bool:
        return os.path.exists(self._file("meta.json"))

    # --- the model state the features are computed from (keys.checkpoint_key) ------------------------------------
    @property
    def fingerprint_record(self):
        """The recorded key of these features (`fingerprint.json`, written before the first chunk)."""
        return StageRecord(self._file("fingerprint.json"), f"The features of checkpoint {self.step} in {self.path}")

    def exists(self) -> bool:
        return os.path.isdir(self.path)

    def discard(self) -> None:
        """Delete everything cached for this checkpoint (main process)."""
        if os.path.isdir(self.path):
            shutil.rmtree(self.path)

    @property
    def meta(self) -> dict[str, Any]:
        """What the checkpoint is (`layout.json`: rows, dim, dtype, chunk size, learning rates) and what computing it
        found (`meta.json`: step, counts, timings, projection)."""
        return {**self.layout, **read_json(self._file("meta.json"))}

    # --- creation (main process) -------------------------------------------------------------------------------
    def create(
        self, num_rows: int, dim: int, dtype: str, chunk_size: int, learning_rates: Sequence[float] = (),
        num_pairs: int | None = None,
    ) -> None:  # fmt: skip
        """Allocate the memory-mapped files once; an existing allocation of the same layout is kept (resume).

        `learning_rates` (those of the optimizer steps that led to this checkpoint, for its weight) are recorded in
        the layout, so that a run killed before the checkpoint is complete resumes with them. `num_pairs` (the
        validation pairs) makes a checkpoint without pool features: its chunks hold similarities to the pairs.
        """
        os.makedirs(self._file("chunks"), exist_ok=True)
        layout = {"num_rows": num_rows, "dim": dim, "dtype": dtype, "chunk_size": chunk_size,
                  "learning_rates": [float(lr) for lr in learning_rates]}  # fmt: skip
        if num_pairs is not None:  # recorded only then: the layout of stored features is the one it always was
            layout.update(pool_features=False, num_pairs=num_pairs)
        if os.path.exists(self._file("layout.json")) and read_json(self._file("layout.json")) == layout:
            return
        for name in os.listdir(self._file("chunks")):  # a different layout: nothing cached is usable
            os.remove(os.path.join(self._file("chunks"), name))
        # ... nor are the files of another layout (validation features included: a checkpoint without pool
        # features writes them first, and a resume scores with them).
        stale = ["pool.npy", "pool_scales.npy", "similarities"] + [f"validation_{o}.npy" for o in VALIDATION_FEATURES]
        for path in map(self._file, stale):
            if os.path.isdir(path):
                shutil.rmtree(path)
            elif os.path.exists(path):
                os.remove(path)
        with disk_errors(self.path):
            if num_pairs is None:
                np.lib.format.open_memmap(self._file("pool.npy"), "w+", NUMPY_DTYPES[dtype], (num_rows, dim)).flush()
                if dtype == "int8":
                    np.lib.format.open_memmap(self._file("pool_scales.npy"), "w+", SCALE_DTYPE, (num_rows,)).flush()
            else:
                os.makedirs(self._file("similarities"), exist_ok=True)
            np.lib.format.open_memmap(self._file("pool_status.npy"), "w+", STATUS_DTYPE, (num_rows,)).flush()
        atomic_write_json(self._file("layout.json"), layout)

    @property
    def stores_pool_features(self) -> bool:
        """Whether the checkpoint holds the pool's features (`pool.npy`) or only their similarities to the pairs."""
        return self.layout.get("pool_features", True)

    @property
    def layout(self) -> dict[str, Any]:
        return read_json(self._file("layout.json"))

    def recorded_learning_rates(self) -> list[float] | None:
        """The learning rates recorded when the checkpoint was started (None before that)."""
        path = self._file("layout.json")
        return read_json(path)["learning_rates"] if os.path.exists(path) else None

    # --- chunks (every process, disjoint rows) -----------------------------------------------------------------
    def num_chunks(self) -> int:
        layout = self.layout
        return -(-layout["num_rows"] // layout["chunk_size"])

    def chunk_rows(self, chunk: int) -> range:
        layout = self.layout
        start = chunk * layout["chunk_size"]
        return range(start, min(start + layout["chunk_size"], layout["num_rows"]))

    def chunk_done(self, chunk: int) -> bool:
        return os.path.exists(self._file(f"chunks/{chunk:06d}.done"))

    def pending_chunks(self) -> list[int]:
        return [chunk for chunk in range(self.num_chunks()) if not self.chunk_done(chunk)]

    def write_chunk(
        self, chunk: int, features: np.ndarray, status: np.ndarray, scales: np.ndarray | None = None
    ) -> None:
        """Write one chunk's rows, flush them, then record the chunk as done."""
        rows = self.chunk_rows(chunk)
        if features.shape[0] != len(rows) or status.shape[0] != len(rows):
            raise ValueError(f"chunk {chunk} covers {len(rows)} rows, got {features.shape[0]} features.")
        with disk_errors(self.path):
            pool = np.load(self._file("pool.npy"), mmap_mode="r+")
            pool[rows.start : rows.stop] = features
            pool.flush()
            status_map = np.load(self._file("pool_status.npy"), mmap_mode="r+")
            status_map[rows.start : rows.stop] = status
            status_map.flush()
            if scales is not None:
                scale_map = np.load(self._file("pool_scales.npy"), mmap_mode="r+")
                scale_map[rows.start : rows.stop] = scales
                scale_map.flush()
            del pool, status_map
        atomic_write_json(self._file(f"chunks/{chunk:06d}.done"), chunk_record(rows))

    def write_similarity_chunk(self, chunk: int, similarities: dict[str, np.ndarray], status: np.ndarray) -> None:
        """Write one chunk's `(rows, V)` similarities of each objective and its status, then record it as done."""
        rows = self.chunk_rows(chunk)
        if status.shape[0] != len(rows) or any(v.shape[0] != len(rows) for v in similarities.values()):
            raise ValueError(f"chunk {chunk} covers {len(rows)} rows, got {status.shape[0]} statuses.")
        with disk_errors(self.path):
            for objective, values in similarities.items():
                path = self._file(f"similarities/{objective}-{chunk:06d}.npy")
                np.save(path[: -len(".npy")] + ".tmp.npy", values.astype(np.float32))
                os.replace(path[: -len(".npy")] + ".tmp.npy", path)
            status_map = np.load(self._file("pool_status.npy"), mmap_mode="r+")
            status_map[rows.start : rows.stop] = status
            status_map.flush()
            del status_map
        atomic_write_json(self._file(f"chunks/{chunk:06d}.done"), chunk_record(rows))

    # --- validation and completion (main process) ----------------------------------------------------------------
    def write_validation(self, features: dict[str, np.ndarray]) -> None:
        """Validation features of each objective (`{"dpo": (V, d), "sft": (V, d)}`), as `validation_<objective>.npy`."""
        for objective, values in features.items():
            tmp = self._file(f"validation_{objective}.tmp.npy")
            with disk_errors(self.path):
                np.save(tmp, values.astype(VALIDATION_DTYPE))
                os.replace(tmp, self._file(f"validation_{objective}.npy"))

    def has_validation(self, objective: str) -> bool:
        return os.path.exists(self._file(f"validation_{objective}.npy"))

    def finalize(self, meta: dict[str, Any]) -> None:
        """Mark the checkpoint complete. Every chunk must be done."""
        pending = self.pending_chunks()
        if pending:
            raise RuntimeError(f"{self.path}: {len(pending)} chunk(s) not written yet (e.g. chunk {pending[0]}).")
        status = self.pool_status()
        meta = {
            **meta,
            "step": self.step,
            "num_ok": int((status == STATUS_OK).sum()),
            "num_empty": int((status == STATUS_EMPTY).sum()),
            "num_nonfinite": int((status == STATUS_NONFINITE).sum()),
        }
        atomic_write_json(self._file("meta.json"), meta)

    # --- reading ------------------------------------------------------------------------------------------------
    def pool_features(self) -> np.ndarray:
        if not self.stores_pool_features:
            raise FileNotFoundError(
                f"{self.path} holds no pool features: they were computed with `store_pool_features=False`, which "
                "keeps only each row's similarities to the validation pairs (`pool_similarities`). Compute the "
                "features again with `store_pool_features=True` where the pool features themselves are needed."
            )
        return np.load(self._file("pool.npy"), mmap_mode="r")

    def pool_similarities(self, objective: str) -> np.ndarray:
        """`(N, V)` float32 cosine of every pool row to every validation pair of `objective` (a checkpoint computed
        with `store_pool_features=False`; read once per checkpoint object)."""
        cache = self.__dict__.setdefault("_similarities", {})
        if objective not in cache:
            if self.stores_pool_features:
                raise FileNotFoundError(f"{self.path} holds pool features, not similarities: score them instead.")
            parts = [np.load(self._file(f"similarities/{objective}-{chunk:06d}.npy"))
                     for chunk in range(self.num_chunks())]  # fmt: skip
            cache[objective] = np.concatenate(parts) if parts else np.zeros((0, self.layout["num_pairs"]), np.float32)
        return cache[objective]

    def pool_scales(self) -> np.ndarray | None:
        path = self._file("pool_scales.npy")
        return np.load(path, mmap_mode="r") if os.path.exists(path) else None

    def pool_status(self) -> np.ndarray:
        return np.load(self._file("pool_status.npy"))

    def validation_features(self, objective: str) -> np.ndarray:
        """`(V, d)` float32 validation features of `objective` ("dpo" or "sft")."""
        path = self._file(f"validation_{objective}.npy")
        if not os.path.exists(path):
            raise FileNotFoundError(f"{self.path} holds no validation features for objective {objective!r}.")
        return np.load(path)

    def nbytes(self) -> int:
        total = 0
        for base, _, files in os.walk(self.path):
            total += sum(os.path.getsize(os.path.join(base, name)) for name in files)
        return total


def round_features(features: np.ndarray, dtype: str) -> np.ndarray:
    """`(N, d)` float32 features as the store holds them in `dtype` (float16/float32, or int8 with its row scales),
    read back to float32: what scoring from stored features sees."""
    if dtype == "int8":
        return dequantize_int8(*quantize_int8(features))
    return np.asarray(features).astype(NUMPY_DTYPES[dtype]).astype(np.float32)


def chunk_record(rows: range) -> dict[str, list[int]]:
    """The completion record of the chunk covering `rows` (`chunks/<id>.done`)."""
    return {"rows": [rows.start, rows.stop]}


def npy_nbytes(shape: Sequence[int], dtype) -> int:
    """Size in bytes of a `.npy` file holding an array of `shape` and `dtype` (header included), as `np.save` and
    `open_memmap` write it."""
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
              "shape": tuple(int(n) for n in shape)}  # fmt: skip
    buffer = io.BytesIO()
    try:
        np.lib.format.write_array_header_1_0(buffer, header)
    except ValueError:  # a header too long for format 1.0 (millions of dimensions): numpy writes 2.0
        buffer = io.BytesIO()
        np.lib.format.write_array_header_2_0(buffer, header)
    return len(buffer.getvalue()) + int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize


def checkpoint_file_bytes(
    num_rows: int, dim: int, dtype: str, num_pairs: int, chunk_size: int, stores_pool_features: bool = True
) -> dict[str, int]:
    """The bytes of each array file (and of all chunk records) one checkpoint's features take, as `create`,
    `write_chunk` (or `write_similarity_chunk`, without pool features) and `write_validation` write them; the small
    JSON records (layout, fingerprint, meta) are not counted. `rose_hf.plan.SelectionPlan` sums them before a run."""
    sizes = {"pool_status.npy": npy_nbytes((num_rows,), STATUS_DTYPE)}
    if stores_pool_features:
        sizes["pool.npy"] = npy_nbytes((num_rows, dim), NUMPY_DTYPES[dtype])
        if dtype == "int8":
            sizes["pool_scales.npy"] = npy_nbytes((num_rows,), SCALE_DTYPE)
    else:
        for objective in VALIDATION_FEATURES:  # one float32 (chunk rows, pairs) file per chunk and objective
            sizes[f"similarities/{objective}-*.npy"] = sum(
                npy_nbytes((min(start + chunk_size, num_rows) - start, num_pairs), np.float32)
                for start in range(0, num_rows, chunk_size)
            )
    for objective in VALIDATION_FEATURES:
        sizes[f"validation_{objective}.npy"] = npy_nbytes((num_pairs, dim), VALIDATION_DTYPE)
    sizes["chunks/*.done"] = sum(
        len(json.dumps(chunk_record(range(start, min(start + chunk_size, num_rows))), indent=2, sort_keys=True))
        for start in range(0, num_rows, chunk_size)
    )
    return sizes


def quantize_int8(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-row symmetric int8 quantisation, to store features in a quarter of float32's space.

    The scale is `max|row| / 127`, so each entry is off by at most `scale / 2`; all-zero rows get scale 1 (they stay
    zero, which `score_pool` reads as invalid).

    Args:
        x: `(N, d)` float array.

    Returns:
        `(q, scales)`: `(N, d)` int8 and `(N,)` float32, with `x ~= q * scales[:, None]`.
    """
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"`x` must be 2-D (rows, dim), got shape {x.shape}.")
    if not np.isfinite(x).all():
        raise ValueError("`x` holds NaN/inf values, which int8 cannot represent; mark those rows invalid instead.")
    peak = np.abs(x).max(axis=1) if x.shape[1] else np.zeros(x.shape[0], dtype=np.float32)
    scales = np.where(peak > 0, peak / 127.0, 1.0).astype(np.float32)
    q = np.clip(np.rint(x / scales[:, None]), -127, 127).astype(np.int8)
    return q, scales


def dequantize_int8(q: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """Inverse of `quantize_int8`: `(N, d)` float32 `q * scales[:, None]`.

    Args:
        q: `(N, d)` int8 matrix.
        scales: `(N,)` per-row scales.
    """
    return np.asarray(q, dtype=np.float32) * np.asarray(scales, dtype=np.float32)[:, None]
