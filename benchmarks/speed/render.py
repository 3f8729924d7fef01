"""`speed.md`: the human-readable report of a `speed.json` dictionary (nothing is measured here)."""

from __future__ import annotations

from typing import Any

from benchmarks.common import fmt, table

from .harness import batch_row


def render_markdown(results: dict[str, Any]) -> str:
    """The human-readable report of a `speed.json` dictionary (the sections it holds)."""
    out = render_core(results) if "floor" in results else ["# rose_hf speed benchmark", ""]
    if "real_shape" in results:
        out += render_real_shape(results["real_shape"])
    return "\n".join(out)


def render_real_shape(section: dict[str, Any]) -> list[str]:
    """The real-shape section's lines."""
    env, model, rows, ratios = section["environment"], section["model"], section["rows"], section["ratios"]
    floor, features, less = section["floor"], section["features"], section["less_style"]
    out = [
        "## Real shape (full mode: SmolLM2-135M)",
        "",
        f"{env['device_name']} (`{env['device']}`, {env['dtype']}), torch {env['torch']}, "
        f"{section['torch_num_threads']} torch thread(s), {env['usable_cpus']} usable CPUs (load average "
        f"{env['load_average_at_start']} at start, {env['load_average_at_end']} at end); {section['seconds']:.0f} s.",
        "",
        f"Model: {model['weights']}; {model['num_layers']} layers, hidden {model['hidden_size']}, "
        f"{model['num_heads']} heads / {model['num_kv_heads']} key-value heads, MLP {model['intermediate_size']}, "
        f"vocabulary {model['vocab_size']:,} (tied embeddings), {model['base_parameters']:,} parameters; LoRA "
        f"r={model['lora_r']} alpha={model['lora_alpha']} on q,k,v,o = {model['lora_parameters']:,} parameters; "
        f"{model['projection']} projection to {model['projection_dim']}. Rows: {rows['count']} {rows['source']}, "
        f"{rows['min_tokens']}-{rows['max_tokens']} tokens (mean {rows['mean_tokens']:.1f}), batches of "
        f"{rows['batch_size']}, {rows['padded_tokens']:,} tokens with padding.",
        "",
        table(
            ["one epoch over the same rows", "s per epoch (median)", "rows/s", "tokens/s", "time / floor"],
            [
                ["floor: LoRA training fwd+bwd, padded batches", fmt(floor["seconds_per_epoch"]),
                 fmt(floor["examples_per_s"]), fmt(floor["tokens_per_s"]), "1.00x"],
                [f"rose_hf features ({model['projection']}, + store write)", fmt(features["seconds_per_epoch"]),
                 fmt(features["examples_per_s"]), fmt(features["tokens_per_s"]),
                 f"{ratios['features_vs_floor']:.2f}x (paired rounds {ratios['features_vs_floor_paired']:.2f}x)"],
                ["LESS-style loop (batch 1, same projector, + store write)", fmt(less["seconds_per_epoch"]),
                 fmt(less["examples_per_s"]), fmt(less["tokens_per_s"]), f"{ratios['less_style_vs_floor']:.2f}x"],
            ],
        ),  # fmt: skip
        "",
        f"rose_hf's features take {ratios['features_vs_floor']:.2f}x the time of a plain training epoch over the same "
        f"rows, and the LESS-style loop {ratios['less_style_vs_features']:.2f}x rose_hf's time (paired rounds "
        f"{ratios['less_style_vs_features_paired']:.2f}x). The loop's features match ours to "
        f"{section['max_abs_feature_difference_less_vs_rose_hf']:.1e} (max abs difference).",
        "",
    ]
    return out


def render_core(results: dict[str, Any]) -> list[str]:
    """The core sections' lines (the proportioned tiny model)."""
    env, model, ratios = results["environment"], results["model"], results["ratios"]
    headline = ratios["headline"]
    out = [
        "# rose_hf speed benchmark",
        "",
        f"{env['device_name']} (`{env['device']}`, {env['dtype']}), torch {env['torch']}, "
        f"{env['torch_num_threads']} torch threads, {env['usable_cpus']} usable CPUs (load average "
        f"{env['load_average_at_start']} at start, {env['load_average_at_end']} at end); "
        f"{'quick' if results['config']['quick'] else 'full'} mode, {results['total_seconds']:.0f} s in all.",
        "",
        f"Model: Llama-style, hidden {model['hidden_size']}, {model['num_layers']} layers, "
        f"{model['num_heads']} heads, "
        f"MLP {model['intermediate_size']}, vocabulary {model['vocab_size']}; LoRA r={model['lora_r']} "
        f"alpha={model['lora_alpha']} on q,k,v,o = {model['lora_parameters']:,} parameters; {model['seq_len']} tokens "
        f"per example (loss on the last {model['completion_tokens_per_example']}); projection dims "
        f"{model['projection_dims']}.",
        "",
        "## Headline",
        "",
        table(
            ["measure", "value", "target"],
            [
                [
                    f"extraction / floor, per example ({headline['projection']}, batch {headline['batch_size']})",
                    f"{headline['extraction_vs_floor']:.2f}x "
                    f"(paired rounds {headline['extraction_vs_floor_paired']:.2f}x, "
                    f"best repeats {headline['extraction_vs_floor_best_of_repeats']:.2f}x)",
                    f"<= {headline['target']}x (aim {headline['aim']}x): "
                    f"{'met' if headline['meets_target'] else 'NOT met'}",
                ],
                [
                    "throughput vs LESS-style batch-1 reference",
                    f"{headline['speedup_vs_less_reference']:.1f}x",
                    f">= {headline['speedup_target_on_gpu']}x on GPU",
                ],
                [
                    "hooks' per-example assembly / forward+backward",
                    f"{headline['hooks_assembly_overhead_vs_forward_backward']:.2f}",
                    "-",
                ],
                [
                    "scoring peak RSS, largest / smallest pool",
                    f"{ratios['scoring_peak_rss_largest_vs_smallest']:.2f} (anonymous memory "
                    f"{ratios['scoring_peak_anon_largest_vs_smallest']:.2f})",
                    f"flat while rows grow {ratios['scoring_rows_largest_vs_smallest']:.0f}x",
                ],
            ],
        ),
        "",
        "## Throughput (examples/s; ratio to the floor's seconds per example: of medians / paired by round)",
        "",
    ]
    batch_sizes = [row["batch_size"] for row in results["floor"]]
    header = ["pass"] + [f"batch {b}" for b in batch_sizes]
    rows = [["floor: LoRA training fwd+bwd"] + [fmt(row["examples_per_s"]) for row in results["floor"]]]
    for kind, entries in results["extraction"].items():
        rows.append(
            [f"rose_hf {kind}"]
            + [
                f"{fmt(row['examples_per_s'])} "
                f"({ratios['extraction_vs_floor_per_example'][kind][str(row['batch_size'])]:.2f}x"
                f" / {row['vs_floor_paired']:.2f}x)"
                for row in entries
            ]
        )
    reference = results["less_reference"]
    rows.append(
        [f"LESS-style reference ({reference['projection']}, batch 1)", fmt(reference["examples_per_s"])]
        + ["-"] * (len(batch_sizes) - 1)
    )
    out += [table(header, rows), ""]
    out += [
        f"Floor tokens/s at batch {headline['batch_size']}: "
        f"{fmt(batch_row(results['floor'], headline['batch_size'])['tokens_per_s'])}. The LESS-style reference's features "
        f"match ours to {reference['max_abs_feature_difference_vs_rose_hf']:.1e} (max abs difference).",
        "",
        f"## Where the time goes (batch {results['phases']['batch_size']})",
        "",
    ]
    phases = results["phases"]
    kinds = list(results["extraction"])
    header = ["phase"] + [f"{kind}: s/batch (share)" for kind in kinds] + ["peak memory MB (+increase over start)"]
    shared = ("forward_backward", "assembly", "adam")

    def memory(entry: dict[str, Any]) -> str:
        return f"{fmt(entry['peak_memory_mb'])} (+{fmt(entry['peak_increase_mb'])})"

    rows = []
    for name in ("forward_backward", "assembly", "adam", "projection", "normalise", "to_host", "write"):
        cells = [
            f"{fmt((phases[name] if name in shared else phases[name][kind])['seconds'])} "
            f"({phases['shares'][kind][name]:.0%})"
            for kind in kinds
        ]
        if name == "assembly":  # timed inside the hooks; its memory is that of the whole hooked pass
            peak = f"hooked fwd+bwd {memory(phases['forward_backward_assembly'])}; per-example gradients " + fmt(
                phases["assembly"]["per_example_gradient_mb"]
            )
        elif name in shared:
            peak = memory(phases[name])
        else:
            peak = "; ".join(f"{kind} {memory(phases[name][kind])}" for kind in kinds)
        rows.append([name] + cells + [peak])
    rows.append(["sum of phases"] + [fmt(phases["shares"][kind]["sum_of_phases_seconds"]) for kind in kinds] + ["-"])
    out += [table(header, rows), ""]
    out += [
        f"Memory method: {phases['forward_backward']['memory_method']}. The per-example `bmm` alone: "
        f"{fmt(phases['assembly']['bmm_seconds'])} s; by difference of runs with and without it: "
        f"{fmt(phases['assembly']['by_difference_seconds'])} s.",
        "",
        "## torch.func vmap per-example gradients",
        "",
    ]
    rows = []
    for attn in ("eager", "sdpa"):
        entry = results["vmap"][attn]
        if entry["status"] == "ok":
            rows.append(
                [attn, "ok", fmt(entry["examples_per_s"]), fmt(entry["hooks"]["examples_per_s"]),
                 f"{entry['seconds_vs_hooks']:.2f}x", fmt(entry["relative_difference_vs_hooks"])]
            )  # fmt: skip
        else:
            rows.append(
                [attn, f"failed: `{entry['error'][:120]}`", "-", fmt(entry["hooks"]["examples_per_s"]), "-", "-"]
            )
    out += [
        table(["attention", "status", "vmap examples/s", "hooks examples/s", "vmap time / hooks", "rel. diff"], rows),
        "",
        "## Scoring (`score_pool` over float16 memmaps, one subprocess each)",
        "",
    ]
    rows = [
        [run["rows"], run["dim"], fmt(run["file_mb"]), fmt(run["seconds"]), fmt(run["rows_per_s"]),
         fmt(run["peak_rss_mb"]), fmt(run["peak_anon_mb"]), fmt(run["file_pages_mapped_after_mb"])]
        for run in results["scoring"]["runs"]
    ]  # fmt: skip
    out += [
        table(["rows", "dim", "file MB", "seconds", "rows/s", "peak RSS MB", "peak anon MB", "memmap pages MB"], rows),
        "",
        results["scoring"]["note"],
        "",
        "## Projection quality (scores vs exact gradients)",
        "",
    ]
    quality = results["quality"]
    rows = [
        [kind, entry["dim"], f"{entry['spearman_vs_exact']:.3f}", f"{entry['top5_overlap_vs_exact']:.2f}"]
        for kind, entry in quality["kinds"].items()
    ]
    int8 = quality["int8_vs_float16"]
    rows.append(
        [
            f"int8 storage of {quality['int8_base']} vs float16",
            "-",
            f"{int8['spearman']:.3f}",
            f"{int8['top5_overlap']:.2f}",
        ]
    )
    out += [
        f"{quality['pool_size']} pool examples, {quality['validation_directions']} validation directions in two "
        "subtasks; top 5% as `select_top` picks it.",
        "",
        table(["features", "dim", "Spearman", "top-5% overlap"], rows),
        "",
        "## Notes",
        "",
        *[f"- {note}" for note in results["notes"]],
        "",
    ]
    return out
