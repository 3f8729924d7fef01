"""Random projections of flattened per-example gradients, shared by the training and validation sides.

ROSE compares a training example's Adam-preconditioned LoRA gradient with a validation pair's DPO gradient by the
cosine of their random projections (paper: a Rademacher projection to 8192 dimensions, seed 0, inputs cast to fp16,
as TRAK does). Both sides must use the *same* matrix, so a projector is a pure function of
`(kind, in_dim, out_dim, seed)` and the numerics knob `input_dtype`: two processes, or two runs months apart with the
same torch version, get bit-identical matrices. `describe()` returns what to store in a feature cache's metadata.

Kinds:
- `"rademacher"`: dense Johnson-Lindenstrauss matrix with entries +-1/sqrt(out_dim). The matrix is never held whole
  (for a 7B LoRA it would be 134M x 8192): it is generated in blocks of rows on the CPU with `torch.Generator`, moved
  to the device, and kept there between calls only when all of it fits in `cache_bytes`.
- `"sjlt"`: sparse JL / count-sketch. Each input coordinate goes to `sjlt_nnz` output buckets with random signs
  +-1/sqrt(sjlt_nnz). O(batch x in_dim x sjlt_nnz) work instead of O(batch x in_dim x out_dim): the practical choice when
  in_dim is in the hundreds of millions.
- `"none"`: identity, for when the gradient is already no larger than the requested dimension
  (see `resolve_projection`).

Example:
```python
>>> import torch
>>> from rose_hf.features.projection import make_projector, resolve_projection
>>> kind, out_dim = resolve_projection("rademacher", in_dim=4096, out_dim=512)
>>> proj = make_projector(kind, in_dim=4096, out_dim=out_dim, seed=0)
>>> proj(torch.randn(3, 4096)).shape
torch.Size([3, 512])
```
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..logs import get_logger, log

logger = get_logger(__name__)

# `RoseConfig.projection`: the sparse sketch, the paper's dense +-1 matrix, or exact gradients.
PROJECTION_KINDS = ("rademacher", "sjlt", "none")


# Rows of the Rademacher matrix drawn from one generator seed. The matrix is defined by these seed chunks, not by
# `block_size`, so `block_size` is a pure memory knob: any block size (and any in_dim prefix) gives the same rows.
_RADEMACHER_SEED_ROWS = 128
# Input coordinates hashed by one generator seed in the sparse sketch (same reasoning as above).
_SJLT_SEED_ROWS = 1 << 16
# Default block: about 2**24 matrix entries (64 MiB in float32, 128 MiB in the CPU's float64 compute dtype).
_DEFAULT_BLOCK_ENTRIES = 1 << 24
_DEFAULT_SJLT_BLOCK_ROWS = 1 << 20
_DEFAULT_CACHE_BYTES = 1 << 30
# Every fp16 value is an integer multiple of 2**-24 below 2**16 in magnitude, so a float64 sum of at most 2**13 of them
# (times +-1) is exact: the CPU path is then independent of how BLAS orders the sum, hence of the batch size.
_EXACT_FP64_ROWS = 1 << 13
# Distinguishes the generator streams of the two random kinds, so they never share signs for the same seed.
_DOMAIN = {"rademacher": 0x52414445, "sjlt": 0x534A4C54}
_INPUT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
# Maps each byte value to its 8 bits as +-1, so one random byte yields 8 signs (about 2x faster than 1 draw per sign).
_BYTE_TO_SIGNS = (((torch.arange(256).unsqueeze(-1) >> torch.arange(8)) & 1) * 2 - 1).to(torch.int8)



def _splitmix64(value: int) -> int:
    value = (value + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return value ^ (value >> 31)


def _base_seed(kind: str, seed: int, out_dim: int) -> int:
    return _splitmix64(_splitmix64(_splitmix64(seed & 0xFFFFFFFFFFFFFFFF) ^ _DOMAIN[kind]) ^ out_dim)


def _chunk_generator(base_seed: int, chunk: int) -> torch.Generator:
    # torch's CPU generator (mt19937) keeps only the low 32 bits of a seed, so hashed per-chunk seeds would collide
    # by the birthday bound (~100 repeated chunks for a 134M-row matrix). Consecutive seeds from a hashed base are
    # distinct for up to 2**32 chunks.
    return torch.Generator(device="cpu").manual_seed((base_seed + chunk) & 0xFFFFFFFF)


def _resolve_device(device: str | torch.device | None) -> torch.device | None:
    return None if device is None else torch.device(device)


def _check_positive_int(name: str, value: Any, fix: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"`{name}` must be a positive integer, got {value!r}. {fix}")


class Projector:
    """Base class: maps `(B, in_dim)` inputs of any float dtype and device to `(B, out_dim)` float32.

    Subclasses implement `_project`. Output lives on `device` when one was given, else on the input's device.
    """

    kind: str = ""

    def __init__(self, in_dim: int, out_dim: int, seed: int = 0, device: str | torch.device | None = None) -> None:
        self.in_dim = in_dim
        self.out_dim = out_dim
        self.seed = seed
        self.device = _resolve_device(device)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Project a batch of flattened vectors.

        Args:
            x: `(B, in_dim)` floating tensor (or `(in_dim,)`, treated as a batch of one).

        Returns:
            `(B, out_dim)` float32 tensor on the projector's device (or the input's, when none was set).
        """
        if x.ndim == 1:
            x = x.unsqueeze(0)
        if x.ndim != 2 or x.shape[1] != self.in_dim:
            raise ValueError(
                f"Expected input of shape (batch, in_dim={self.in_dim}), got {tuple(x.shape)}. The projector was built "
                "for a different gradient size: rebuild it with `in_dim` equal to the number of trainable parameters."
            )
        if not x.is_floating_point():
            raise ValueError(f"Expected a floating point input, got dtype {x.dtype}.")
        device = self.device if self.device is not None else x.device
        with torch.no_grad():
            return self._project(x.detach().to(device), device)

    def _project(self, x: torch.Tensor, device: torch.device) -> torch.Tensor:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """JSON-able description to store in cache metadata; equal descriptions mean identical projections."""
        return {
            "kind": self.kind,
            "in_dim": self.in_dim,
            "out_dim": self.out_dim,
            "seed": self.seed,
            "block_size": None,
        }

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self.describe().items() if k != "kind")
        return f"{type(self).__name__}({fields})"


class IdentityProjector(Projector):
    """No projection: returns the input as float32 (used when the gradient is already small enough)."""

    kind = "none"

    def _project(self, x: torch.Tensor, device: torch.device) -> torch.Tensor:
        return x.float()


class _BlockCache:
    """Per-device cache of generated blocks, used only when the whole matrix fits the byte budget."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.blocks: dict[tuple[torch.device, str], dict[int, Any]] = {}

    def get(self, key: tuple[torch.device, str], total_bytes: int, index: int, make: Any) -> Any:
        if total_bytes > self.budget:
            return make()
        per_key = self.blocks.setdefault(key, {})
        if index not in per_key:
            per_key[index] = make()
        return per_key[index]


class RademacherProjector(Projector):
    """Dense JL projection with entries +-1/sqrt(out_dim), generated blockwise and deterministically.

    Row `i` of the matrix depends only on `(seed, out_dim, i)`: it comes from the `i // 128`-th seed chunk, drawn by a
    CPU `torch.Generator` seeded from a hash of `(seed, out_dim)` plus the chunk index. Hence the matrix does not
    depend on `block_size`, the batch, the process or the device.

    Numerics: the input is rounded to `input_dtype` (fp16 by default, as in the paper/TRAK). On CUDA the matmul runs in
    that dtype on tensor cores with float32 output; block results are summed in float32 (repeated calls are
    bit-identical; across batch sizes it depends on cuBLAS's kernel choice; vs the CPU result, ~3e-7 relative). On CPU, where fp16 matmul is
    slow, the rounded input is widened to float64 and multiplied by exact +-1 signs in sub-blocks of 8192 rows: with fp16
    inputs every sub-block sum is exact, so the CPU result is bit-identical whatever the batch size or BLAS kernel.
    An input value above the fp16 range (65504) becomes inf, as in TRAK; callers should treat non-finite outputs as
    invalid examples.

    Cost: generating signs on the CPU takes 1.3-2 ns per matrix entry. When the whole matrix fits `cache_bytes` it is
    generated once (then 2**20 x 8192 at batch 32 took 10 ms per call on an H200); otherwise every call regenerates
    it, which for in_dim x out_dim = 134M x 8192 (~1e12 entries) is about half an hour per call: use `"sjlt"` there.

    Args:
        in_dim: length of the flattened gradient.
        out_dim: projected dimension (paper: 8192).
        seed: random seed (paper: 0).
        device: where to compute and cache; `None` follows each input.
        block_size: rows of the matrix materialised at once; rounded up to a multiple of 128.
        cache_bytes: keep all blocks on the device between calls when they fit this budget: in the compute dtype
            (float64 on CPU, `input_dtype` on CUDA) if `in_dim * out_dim * itemsize` fits, else as int8 signs if
            `in_dim * out_dim` bytes fit.
        input_dtype: dtype the input is rounded to before projecting (`None`: no rounding).
    """

    kind = "rademacher"

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        seed: int = 0,
        device: str | torch.device | None = None,
        block_size: int | None = None,
        cache_bytes: int = _DEFAULT_CACHE_BYTES,
        input_dtype: torch.dtype | None = torch.float16,
    ) -> None:
        super().__init__(in_dim, out_dim, seed, device)
        if block_size is None:
            block_size = max(1, _DEFAULT_BLOCK_ENTRIES // out_dim)
        block_size = min(block_size, in_dim + _RADEMACHER_SEED_ROWS - 1)
        self.block_size = -(-block_size // _RADEMACHER_SEED_ROWS) * _RADEMACHER_SEED_ROWS
        self.num_blocks = -(-in_dim // self.block_size)
        self.input_dtype = input_dtype
        self.scale = 1.0 / math.sqrt(out_dim)
        self._base_seed = _base_seed(self.kind, seed, out_dim)
        self._cache = _BlockCache(cache_bytes)
        if in_dim * out_dim > cache_bytes:
            log(
                f"Rademacher matrix ({in_dim} x {out_dim}) exceeds cache_bytes={cache_bytes}: regenerating it "
                "blockwise on every call."
            )

    def sign_block(self, index: int) -> torch.Tensor:
        """The +-1 signs (int8, CPU) of rows `[index * block_size, min((index + 1) * block_size, in_dim))`.

        Args:
            index: block index in `[0, num_blocks)`.
        """
        start = index * self.block_size
        stop = min(start + self.block_size, self.in_dim)
        bytes_per_row = -(-self.out_dim // 8)
        chunks = []
        for chunk in range(start // _RADEMACHER_SEED_ROWS, -(-stop // _RADEMACHER_SEED_ROWS)):
            generator = _chunk_generator(self._base_seed, chunk)
            # Always draw the full chunk, so a truncated last chunk holds the same rows as in a larger in_dim.
            random_bytes = torch.randint(
                0, 256, (_RADEMACHER_SEED_ROWS, bytes_per_row), dtype=torch.int64, generator=generator
            )
            chunks.append(_BYTE_TO_SIGNS[random_bytes].view(_RADEMACHER_SEED_ROWS, -1)[:, : self.out_dim])
        signs = torch.cat(chunks) if len(chunks) > 1 else chunks[0]
        offset = start - (start // _RADEMACHER_SEED_ROWS) * _RADEMACHER_SEED_ROWS
        return signs[offset : offset + stop - start].contiguous()

    def _project(self, x: torch.Tensor, device: torch.device) -> torch.Tensor:
        if self.input_dtype is not None:
            x = x.to(self.input_dtype)
        on_cuda = device.type == "cuda"
        if on_cuda:
            compute_dtype = x.dtype if x.dtype in (torch.float16, torch.bfloat16) else torch.float32
            accumulate_dtype = torch.float32
        else:
            compute_dtype = accumulate_dtype = torch.float64
        x = x.to(compute_dtype)
        out = torch.zeros(x.shape[0], self.out_dim, dtype=accumulate_dtype, device=device)
        # Cache the signs already converted to the compute dtype when that fits (converting int8 each call costs more
        # than a small-batch matmul on CPU), else as int8 (1 byte per entry), else regenerate every call.
        entries = self.in_dim * self.out_dim
        converted = entries * torch.empty((), dtype=compute_dtype).element_size() <= self._cache.budget
        key, total_bytes = ((device, str(compute_dtype)), 0) if converted else ((device, "int8"), entries)
        buffer: torch.Tensor | None = None
        for index in range(self.num_blocks):
            signs = self._cache.get(
                key,
                total_bytes,
                index,
                lambda i=index: self.sign_block(i).to(device, compute_dtype if converted else None, non_blocking=True),
            )
            if signs.dtype != compute_dtype:
                # Reuse one buffer: a fresh allocation per block costs page faults comparable to the matmul.
                if buffer is None or buffer.shape != signs.shape:
                    buffer = torch.empty(signs.shape, dtype=compute_dtype, device=device)
                signs = buffer.copy_(signs)
            start = index * self.block_size
            x_block = x[:, start : start + signs.shape[0]]
            if on_cuda:
                out += _matmul_float32_out(x_block, signs)
            else:
                for sub in range(0, signs.shape[0], _EXACT_FP64_ROWS):
                    out += x_block[:, sub : sub + _EXACT_FP64_ROWS] @ signs[sub : sub + _EXACT_FP64_ROWS]
        return (out * self.scale).float()

    def describe(self) -> dict[str, Any]:
        description = super().describe()
        description.update(block_size=self.block_size, input_dtype=_dtype_name(self.input_dtype))
        return description


def _matmul_float32_out(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    if a.dtype == torch.float32:
        return a @ b
    try:
        # Half inputs on tensor cores, float32 accumulation AND output (a half output would round each block's sum).
        return torch.mm(a, b, out_dtype=torch.float32)
    except (RuntimeError, TypeError):
        return (a @ b).float()


def _dtype_name(dtype: torch.dtype | None) -> str | None:
    return None if dtype is None else str(dtype).removeprefix("torch.")


class SJLTProjector(Projector):
    """Sparse JL projection (count-sketch): each input coordinate adds +-x_i/sqrt(s) to `s` distinct output buckets.

    With `s > 1` the output is split into `s` contiguous segments and coordinate `i` gets one bucket in each, so its
    `s` buckets are distinct. Buckets and signs depend only on `(seed, out_dim, s, i)`.

    Deterministic: on CPU the sums run sequentially (`index_add_`), bit-identical for any batch split; on CUDA through
    `index_put_(accumulate=True)`, which sorts indices instead of using float atomics (CUDA `index_add_` does not give
    the same bits twice), so repeated calls are bit-identical there too, though a batch of one may differ from a
    larger batch in the last bits (~6e-7 relative). 134M -> 8192 at batch 8 took 50 ms per call on an H200.

    Args:
        in_dim: length of the flattened gradient.
        out_dim: number of buckets.
        seed: random seed.
        device: where to compute and cache; `None` follows each input.
        block_size: input coordinates processed at once; rounded up to a multiple of 65536.
        cache_bytes: keep the hashes on the device when `in_dim * s * 5` bytes fit this budget.
        input_dtype: dtype the input is rounded to first (`None`: no rounding, the default for this kind).
        sjlt_nnz: nonzeros per input coordinate, `s`.
    """

    kind = "sjlt"

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        seed: int = 0,
        device: str | torch.device | None = None,
        block_size: int | None = None,
        cache_bytes: int = _DEFAULT_CACHE_BYTES,
        input_dtype: torch.dtype | None = None,
        sjlt_nnz: int = 1,
    ) -> None:
        super().__init__(in_dim, out_dim, seed, device)
        self.nnz = sjlt_nnz
        if block_size is None:
            block_size = _DEFAULT_SJLT_BLOCK_ROWS
        block_size = min(block_size, in_dim + _SJLT_SEED_ROWS - 1)
        self.block_size = -(-block_size // _SJLT_SEED_ROWS) * _SJLT_SEED_ROWS
        self.num_blocks = -(-in_dim // self.block_size)
        self.input_dtype = input_dtype
        self.scale = 1.0 / math.sqrt(sjlt_nnz)
        self._base_seed = _base_seed(self.kind, seed, out_dim) ^ sjlt_nnz
        # int32 bucket + int8 sign per nonzero.
        self._cache = _BlockCache(cache_bytes)

    def hash_block(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Buckets `(s, n)` int32 and signs `(s, n)` int8 (CPU) for the input coordinates of block `index`.

        Args:
            index: block index in `[0, num_blocks)`.
        """
        start = index * self.block_size
        stop = min(start + self.block_size, self.in_dim)
        bounds = [k * self.out_dim // self.nnz for k in range(self.nnz + 1)]
        buckets, signs = [], []
        for chunk in range(start // _SJLT_SEED_ROWS, -(-stop // _SJLT_SEED_ROWS)):
            generator = _chunk_generator(self._base_seed, chunk)
            buckets.append(
                torch.stack(
                    [
                        torch.randint(lo, hi, (_SJLT_SEED_ROWS,), dtype=torch.int64, generator=generator)
                        for lo, hi in zip(bounds[:-1], bounds[1:])
                    ]
                ).to(torch.int32)
            )
            signs.append(
                torch.randint(0, 2, (self.nnz, _SJLT_SEED_ROWS), dtype=torch.int8, generator=generator) * 2 - 1
            )
        offset = start - (start // _SJLT_SEED_ROWS) * _SJLT_SEED_ROWS
        bucket = torch.cat(buckets, dim=1)[:, offset : offset + stop - start].contiguous()
        sign = torch.cat(signs, dim=1)[:, offset : offset + stop - start].contiguous()
        return bucket, sign

    def _project(self, x: torch.Tensor, device: torch.device) -> torch.Tensor:
        if self.input_dtype is not None:
            x = x.to(self.input_dtype)
        x = x.float()
        on_cuda = device.type == "cuda"
        # CUDA accumulates into (out_dim, B) rows so `index_put_` can sort just the bucket indices.
        out = torch.zeros(
            (self.out_dim, x.shape[0]) if on_cuda else (x.shape[0], self.out_dim), dtype=torch.float32, device=device
        )
        for index in range(self.num_blocks):
            bucket, sign = self._cache.get(
                (device, "hash"),
                self.in_dim * self.nnz * 5,  # int32 bucket + int8 sign per nonzero
                index,
                lambda i=index: tuple(t.to(device, non_blocking=True) for t in self.hash_block(i)),
            )
            start = index * self.block_size
            x_block = x[:, start : start + bucket.shape[1]]
            for k in range(self.nnz):
                values = x_block * sign[k].to(torch.float32)
                if on_cuda:
                    out.index_put_((bucket[k].long(),), values.T, accumulate=True)
                else:
                    out.index_add_(1, bucket[k], values)
        if on_cuda:
            out = out.T.contiguous()
        return out * self.scale if self.nnz > 1 else out

    def describe(self) -> dict[str, Any]:
        description = super().describe()
        description.update(block_size=self.block_size, input_dtype=_dtype_name(self.input_dtype), sjlt_nnz=self.nnz)
        return description


def resolve_projection(kind: str, in_dim: int, out_dim: int) -> tuple[str, int]:
    """Pick the projection actually worth running: none when the gradient is no larger than the target dimension.

    Args:
        kind: requested kind (one of `PROJECTION_KINDS`).
        in_dim: length of the flattened gradient.
        out_dim: requested projected dimension (ignored for `"none"`).

    Returns:
        `("none", in_dim)` when `kind == "none"` or `in_dim <= out_dim` (a random projection could only lose
        information there), else `(kind, out_dim)`.
    """
    _check_kind(kind)
    _check_positive_int("in_dim", in_dim, "Pass the number of trainable (LoRA) parameters.")
    if kind == "none":
        return "none", in_dim
    _check_positive_int("out_dim", out_dim, "Pass the projected dimension, e.g. 8192 as in the paper.")
    if in_dim <= out_dim:
        return "none", in_dim
    return kind, out_dim


def _check_kind(kind: str) -> None:
    if kind not in PROJECTION_KINDS:
        raise ValueError(f"Unknown projection `kind`={kind!r}. Use one of {', '.join(map(repr, PROJECTION_KINDS))}.")


def make_projector(
    kind: str,
    in_dim: int,
    out_dim: int,
    seed: int = 0,
    device: str | torch.device | None = None,
    block_size: int | None = None,
    cache_bytes: int = _DEFAULT_CACHE_BYTES,
    input_dtype: torch.dtype | str | None = "auto",
    sjlt_nnz: int = 1,
) -> Projector:
    """Build a projector.

    Args:
        kind: `"rademacher"` (dense, the paper's), `"sjlt"` (sparse count-sketch) or `"none"` (identity).
        in_dim: length of the flattened gradient.
        out_dim: projected dimension; must equal `in_dim` for `"none"` (see `resolve_projection`).
        seed: random seed; the same seed gives the same matrix in every process and run.
        device: where to compute and cache generated blocks; `None` follows each input.
        block_size: rows of in_dim handled at once (a memory knob only: it does not change the result's matrix);
            `None` picks ~2**24 matrix entries per block for rademacher, 2**20 coordinates for sjlt.
        cache_bytes: device memory budget for keeping generated blocks between calls.
        input_dtype: dtype inputs are rounded to before projecting; `"auto"` is float16 for rademacher (the paper's
            TRAK path) and no rounding for sjlt; `None` never rounds.
        sjlt_nnz: nonzeros per input coordinate for `"sjlt"`.

    Example:
    ```python
    >>> proj = make_projector("sjlt", in_dim=10_000, out_dim=256, seed=0, sjlt_nnz=2)
    >>> proj.describe()["kind"]
    'sjlt'
    ```
    """
    _check_kind(kind)
    _check_positive_int("in_dim", in_dim, "Pass the number of trainable (LoRA) parameters.")
    _check_positive_int("out_dim", out_dim, "Pass the projected dimension, e.g. 8192 as in the paper.")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"`seed` must be an integer, got {seed!r}.")
    if block_size is not None:
        _check_positive_int("block_size", block_size, "Pass a number of rows, or None for the default.")
    if isinstance(cache_bytes, bool) or not isinstance(cache_bytes, int) or cache_bytes < 0:
        raise ValueError(f"`cache_bytes` must be a non-negative integer, got {cache_bytes!r}. Use 0 to never cache.")
    if input_dtype == "auto":
        input_dtype = torch.float16 if kind == "rademacher" else None
    if input_dtype is not None and input_dtype not in _INPUT_DTYPES:
        raise ValueError(
            f"`input_dtype` must be one of {[_dtype_name(d) for d in _INPUT_DTYPES]}, None or 'auto', got {input_dtype!r}."
        )
    if kind == "none":
        if out_dim != in_dim:
            raise ValueError(
                f"`out_dim`={out_dim} must equal `in_dim`={in_dim} for kind='none'. Use "
                "`resolve_projection(kind, in_dim, out_dim)` to get the matching (kind, out_dim)."
            )
        return IdentityProjector(in_dim, out_dim, seed, device)
    if kind == "rademacher":
        return RademacherProjector(in_dim, out_dim, seed, device, block_size, cache_bytes, input_dtype)
    _check_positive_int("sjlt_nnz", sjlt_nnz, "Use 1 (count-sketch) or a small number such as 2-8.")
    if sjlt_nnz > out_dim:
        raise ValueError(
            f"`sjlt_nnz`={sjlt_nnz} cannot exceed `out_dim`={out_dim}: each nonzero needs its own bucket."
        )
    return SJLTProjector(in_dim, out_dim, seed, device, block_size, cache_bytes, input_dtype, sjlt_nnz)
