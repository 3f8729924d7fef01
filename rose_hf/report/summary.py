"""The report's first section: the run's health verdict (when scoring gave one), what was selected with which
settings (as USED: the projection and feature layout featurization recorded, not the config's request), and the
time and storage of each stage."""

from __future__ import annotations

import os

import numpy as np

from ..scoring.methods import scoring_method
from .context import ReportContext
from .markdown import dir_bytes, escape_cell, num_bytes, pct, seconds, table


def scoring_of(ctx: ReportContext) -> tuple[str, str]:
    """`(scoring, validation_objective)` of the run: what `selection.json` says was scored, else its config."""
    return str(ctx.info.get("scoring") or ctx.config.scoring), ctx.config.validation_objective


def scores_text(ctx: ReportContext) -> str:
    """What a score is and where it lies, for the scoring the run used (the method object says)."""
    scoring, objective = scoring_of(ctx)
    aggregation = ctx.info.get("aggregation", ctx.config.subtask_aggregation)
    return scoring_method(scoring).describe_scores(objective, aggregation)


def verdict(ctx: ReportContext) -> list[str]:
    """The selection's health line (`selection.json`'s `health`: `verdict` and `message`), or nothing."""
    health = ctx.info.get("health")
    if not isinstance(health, dict) or not health.get("verdict"):
        return []
    message = health.get("message") or ""
    return [f"**Verdict: {escape_cell(health['verdict'], None)}.** {escape_cell(message, None)}".rstrip(), ""]


def projection_text(ctx: ReportContext) -> str:
    """The projection featurization used (`meta.json`'s `projection`), and the request when it differs.

    With fewer LoRA parameters than `projection_dim`, `resolve_projection` keeps the exact gradients ("none") instead
    of the requested random projection, so the config alone would misreport the run.
    """
    config = ctx.config
    asked = "none" if config.projection == "none" else f"{config.projection}, {config.projection_dim} dims"
    used = ctx.recorded("projection")
    if not used:
        return f"{asked} (as configured: the feature cache records no projection)"
    parts, notes = [], []
    for description in used:
        kind, out_dim, in_dim = description.get("kind"), description.get("out_dim"), description.get("in_dim")
        if kind == "none":
            parts.append(f"none, {out_dim} dims (exact gradients)")
        else:
            parts.append(f"{kind}, {out_dim} dims (seed {description.get('seed')})")
        matches = kind == config.projection and (kind == "none" or out_dim == config.projection_dim)
        if not matches:
            reason = ""
            if kind == "none" and in_dim is not None:
                reason = (
                    f": the LoRA has {in_dim} parameters, no more than {config.projection_dim}, so they are kept whole"
                )
            notes.append(f"asked for {asked}{reason}")
    return "; ".join(parts + list(dict.fromkeys(notes)))


def _storage_text(ctx: ReportContext) -> str:
    layouts = {(row["meta"].get("dtype"), row["meta"].get("dim")) for row in ctx.checkpoints if "dim" in row["meta"]}
    if not layouts:
        return f"{ctx.config.feature_dtype} (as configured: the feature cache records no layout)"
    return "; ".join(f"{dtype}, {dim} values per row" for dtype, dim in sorted(layouts, key=str))


def summary(ctx: ReportContext) -> list[str]:
    config, info = ctx.config, ctx.info
    num_selected = len(ctx.selected)
    num_invalid = int(info.get("num_invalid", ctx.num_pool - int(ctx.valid.sum())))
    tokenization = info.get("tokenization") or {}
    if config.selection_size is not None:
        budget = f"selection_size={config.selection_size}"
    else:
        budget = f"selection_fraction={config.selection_fraction:g}"
    invalid_detail = []
    if "pool_without_completion" in tokenization:
        invalid_detail.append(f"{tokenization['pool_without_completion']} with no completion token left")
    if info.get("num_nonfinite_rows"):
        invalid_detail.append(f"{info['num_nonfinite_rows']} with non-finite features")
    objective = config.validation_objective
    if "dpo" in objective:
        objective += f" ({config.dpo_loss_type}, beta {config.beta:g})"
    if config.validation_objective == "dpo+sft" and config.scoring == "paper":
        objective += f", DPO side weighted {config.dpo_weight:g}"
    rows = [
        ("Pool rows", ctx.num_pool),
        ("Selected rows", f"{num_selected} ({pct(num_selected, ctx.num_pool, 2)} of the pool; {budget})"),
        (
            "Rows without a usable gradient",
            f"{num_invalid} ({pct(num_invalid, ctx.num_pool, 2)})"
            + (f": {', '.join(invalid_detail)}" if invalid_detail else ""),
        ),
        (
            "Checkpoints used (step: weight)",
            ", ".join(f"{row['step']}: {row['weight']:.3f}" for row in ctx.checkpoints) or "none",
        ),
        ("Validation objective", objective),
        ("Projection", projection_text(ctx)),
        ("Preconditioner", config.preconditioner),
        ("Subtask aggregation", info.get("aggregation", config.subtask_aggregation)),
        ("Feature storage", _storage_text(ctx)),
    ]
    if tokenization:
        rows.append(
            (
                f"Truncated to max_length={config.feature_max_length}",
                f"{tokenization.get('pool_truncated', 'n/a')} pool rows, "
                f"{tokenization.get('pairs_truncated', 'n/a')} preference pairs",
            )
        )
    prefilter = info.get("prefilter")
    if prefilter and "num_kept" in prefilter:
        seconds = f" in {prefilter['seconds']:.1f}s" if "seconds" in prefilter else ""
        rows.append(("Prefilter (forward-only, RDS+ round robin)",
                     f"kept {prefilter['num_kept']} rows for the gradient features{seconds}; the others are never "
                     "selected"))  # fmt: skip
    if ctx.valid.any():
        valid_scores = ctx.scores[ctx.valid]
        rows.append(
            (
                "Score of valid rows (min / median / max)",
                f"{valid_scores.min():.4f} / {np.median(valid_scores):.4f} / {valid_scores.max():.4f}",
            )
        )
    return [
        "## Summary",
        "",
        *verdict(ctx),
        f"What was selected and with which settings. {scores_text(ctx)} Rows without a usable gradient (e.g. "
        "nothing left to learn after truncation) are never selected.",
        "",
        *table(["Item", "Value"], rows),
        "",
        *costs(ctx),
    ]


def costs(ctx: ReportContext) -> list[str]:
    info, tokenization = ctx.info, ctx.info.get("tokenization") or {}
    feature_seconds = {str(k): v for k, v in (info.get("feature_seconds") or {}).items()}
    feature_bytes = {str(k): v for k, v in (info.get("feature_bytes") or {}).items()}
    rows: list[tuple[str, str, str]] = []
    total_seconds, total_bytes = 0.0, 0
    if "tokenize_seconds" in tokenization:
        rows.append(("Tokenization (pool + pairs)", seconds(tokenization["tokenize_seconds"]), "in memory"))
        total_seconds += float(tokenization["tokenize_seconds"])
    pool_seconds = 0.0
    for row in ctx.checkpoints:
        key, meta = str(row["step"]), row["meta"]
        spent = feature_seconds.get(key)
        size = feature_bytes.get(key)
        detail = ""
        if "pool_seconds" in meta:
            pool_seconds += float(meta["pool_seconds"])
            detail = f" (pool {seconds(meta['pool_seconds'])}, validation {seconds(meta.get('validation_seconds'))})"
        rows.append((f"Features, checkpoint {key}", seconds(spent) + detail, num_bytes(size)))
        total_seconds += float(spent or 0.0)
        total_bytes += int(size or 0)
    selection_bytes = sum(
        dir_bytes(os.path.join(ctx.output_dir, name)) or 0
        for name in ("scores.npy", "valid.npy", "selected_indices.json", "selected", "selected.jsonl")
    )
    rows.append(("Scoring + selection", seconds(info.get("score_seconds")), num_bytes(selection_bytes)))
    total_seconds += float(info.get("score_seconds") or 0.0)
    total_bytes += selection_bytes
    rows.append(("**Total**", f"**{seconds(total_seconds)}**", f"**{num_bytes(total_bytes)}**"))
    if all(row["meta"].get("pool_features", True) for row in ctx.checkpoints):
        kept = ("stores one projected vector per example and checkpoint. Scoring is a few matrix products over the "
                "stored features.")  # fmt: skip
    else:
        kept = ("keeps, per example and checkpoint, only its similarity to each validation pair "
                "(`store_pool_features=False`), from which scoring is a few small matrix products.")  # fmt: skip
    lines = [
        "### Time and storage per stage",
        "",
        "Feature extraction dominates: it runs one forward/backward pass per pool example and checkpoint, and "
        + kept,
        "",
        *table(["Stage", "Time", "Storage"], rows),
    ]
    num_checkpoints = len(ctx.checkpoints)
    if num_checkpoints and ctx.num_pool:
        per_row = []
        if pool_seconds:
            per_row.append(f"{1000 * pool_seconds / (ctx.num_pool * num_checkpoints):.2f} ms")
        if feature_bytes:
            per_row.append(f"{num_bytes(sum(feature_bytes.values()) / (ctx.num_pool * num_checkpoints))} on disk")
        if per_row:
            lines += [
                "",
                f"Per pool example and checkpoint: {' and '.join(per_row)} (LESS on Llama-2-7B: about 160 ms on "
                "one A100 and 16 KB at 8192 dims in float16).",
            ]
    return lines
