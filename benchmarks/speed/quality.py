"""Quality of the cheap options: Spearman correlation and top-5% overlap of scores from projected features against
scores from exact gradients, and of int8 against float16 storage."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from benchmarks.common import log

from .config import TOP_FRACTION
from .workload import slice_batch, synthetic_batch, unit_rows

if TYPE_CHECKING:
    import numpy as np


def rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation (scipy's when installed, else average ranks with numpy)."""
    import numpy as np

    try:
        from scipy.stats import spearmanr

        return float(spearmanr(a, b).statistic)
    except ImportError:
        pass

    def ranks(x: np.ndarray) -> np.ndarray:
        order = np.argsort(x, kind="mergesort")
        position = np.empty(len(x), dtype=np.float64)
        position[order] = np.arange(len(x), dtype=np.float64)
        _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
        return np.bincount(inverse, weights=position)[inverse] / counts[inverse]  # ties share their mean rank

    return float(np.corrcoef(ranks(np.asarray(a)), ranks(np.asarray(b)))[0, 1])


def top_overlap(a: np.ndarray, b: np.ndarray, fraction: float = TOP_FRACTION) -> float:
    """Share of the top `fraction` of `a` (as `select_top` picks it) that is also in the top `fraction` of `b`."""
    from rose_hf import select_top

    top_a, top_b = select_top(a, fraction=fraction), select_top(b, fraction=fraction)
    return len(set(top_a.tolist()) & set(top_b.tolist())) / len(top_a)


def measure_quality(model, collector, featurizers, adam, tokenizer, config, device) -> dict[str, Any]:
    """Scores from projected features against scores from exact gradients, on a small pool."""
    import numpy as np
    import torch

    from rose_hf.cache.store import quantize_int8
    from rose_hf.features.gradients import sft_per_example_loss
    from rose_hf.features.projection import make_projector
    from rose_hf.scoring.similarity import score_pool

    def gradients(batch, precondition: bool) -> torch.Tensor:
        out = []
        for start in range(0, batch["input_ids"].shape[0], config.target_batch_size):
            part = slice_batch(batch, start, start + config.target_batch_size)
            with collector.capture():
                loss, _ = sft_per_example_loss(model, part)
                collector.backward(loss.sum())
                grads = collector.flat_gradients()
            out.append(adam.precondition(grads) if precondition else grads)
        return torch.cat(out)

    vocab = len(tokenizer)
    pool = synthetic_batch(config.quality_pool_size, config.seq_len, vocab, config.seed + 11, device)
    validation = synthetic_batch(config.quality_validation_size, config.seq_len, vocab, config.seed + 12, device)
    pool_grads = gradients(pool, precondition=True)  # pool side: Adam-preconditioned, as ROSE/LESS
    validation_grads = gradients(validation, precondition=False)  # validation side: plain gradients
    subtasks = ["a" if i % 2 == 0 else "b" for i in range(config.quality_validation_size)]

    def scores(pool_features: np.ndarray, validation_features: np.ndarray, scales=None) -> np.ndarray:
        result, _ = score_pool([pool_features], [validation_features], [1.0], subtasks, row_scales=scales)
        return result

    def features(projector) -> tuple[np.ndarray, np.ndarray]:
        pool_features = torch.cat([unit_rows(projector(g)) for g in pool_grads.split(256)])
        return pool_features.cpu().numpy(), unit_rows(projector(validation_grads)).cpu().numpy()

    exact_pool, exact_validation = features(lambda g: g.float())
    exact = scores(exact_pool.astype(np.float16), exact_validation)
    result: dict[str, Any] = {
        "pool_size": config.quality_pool_size,
        "validation_directions": config.quality_validation_size,
        "top_fraction": TOP_FRACTION,
        "reference": "exact Adam-preconditioned LoRA gradients (no projection), stored as float16",
        "kinds": {},
    }
    projectors = {kind: f.projector for kind, f in featurizers.items() if f.projector.kind != "none"}
    num_params = collector.num_params
    for kind in ("rademacher", "sjlt"):
        if kind not in projectors and num_params > config.projection_dim:
            projectors[kind] = make_projector(kind, num_params, config.projection_dim, seed=0, device=device)
    rademacher_features = None
    for kind, projector in projectors.items():
        start = time.perf_counter()
        pool_features, validation_features = features(projector)
        projected = scores(pool_features.astype(np.float16), validation_features)
        result["kinds"][kind] = {
            "dim": projector.out_dim,
            "spearman_vs_exact": rank_correlation(projected, exact),
            "top5_overlap_vs_exact": top_overlap(projected, exact),
            "seconds": time.perf_counter() - start,
        }
        if kind == "rademacher":
            rademacher_features = (pool_features, validation_features, projected)
        log(
            f"quality {kind}: spearman {result['kinds'][kind]['spearman_vs_exact']:.3f}, top-5% overlap "
            f"{result['kinds'][kind]['top5_overlap_vs_exact']:.3f}"
        )
    if "none" in featurizers:
        # The pipeline's own unprojected features (Featurizer: hooks, Adam, normalise, to host), batch by batch as the
        # throughput section times them: they must rank the pool exactly as the exact gradients above do.
        start = time.perf_counter()
        featurizer = featurizers["none"]
        pool_features = np.concatenate(
            [
                featurizer.pool_features(slice_batch(pool, i, i + config.target_batch_size), adam)[0]
                for i in range(0, config.quality_pool_size, config.target_batch_size)
            ]
        )
        unprojected = scores(pool_features.astype(np.float16), exact_validation)
        result["kinds"]["none"] = {
            "dim": featurizer.dim,
            "spearman_vs_exact": rank_correlation(unprojected, exact),
            "top5_overlap_vs_exact": top_overlap(unprojected, exact),
            "seconds": time.perf_counter() - start,
        }
        log(f"quality none (Featurizer): spearman {result['kinds']['none']['spearman_vs_exact']:.3f}")
    # int8 storage of the default-pipeline (Rademacher) features against float16 storage of the same features.
    if rademacher_features is None:
        rademacher_features = (exact_pool, exact_validation, exact)
        result["int8_base"] = "exact"
    else:
        result["int8_base"] = "rademacher"
    pool_features, validation_features, fp16_scores = rademacher_features
    quantized, scales = quantize_int8(pool_features)
    int8_scores = scores(quantized, validation_features, [scales])
    result["int8_vs_float16"] = {
        "spearman": rank_correlation(int8_scores, fp16_scores),
        "top5_overlap": top_overlap(int8_scores, fp16_scores),
        "top5_overlap_vs_exact": top_overlap(int8_scores, exact),
    }
    log(f"quality int8 vs float16: top-5% overlap {result['int8_vs_float16']['top5_overlap']:.3f}")
    return result
