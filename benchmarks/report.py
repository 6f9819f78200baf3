"""Markdown table and plot from results.json (rewritten after every run)."""

from __future__ import annotations

import statistics
from pathlib import Path

ARMS = [("zero_shot", "(d) zero-shot base"), ("lora_all", "(a) LoRA, all blocks"), ("flexora", "(b) Flexora (first-order)"),
        ("random", "(c) LoRA, random blocks (same count)"), ("flexora_unrolled_k1", "Flexora unrolled K=1"),
        ("flexora_unrolled_k2", "Flexora unrolled K=2")]


def _mean(values):
    values = [v for v in values if v is not None]
    return statistics.mean(values) if values else None


def _sd(values):
    values = [v for v in values if v is not None]
    return statistics.stdev(values) if len(values) > 1 else 0.0


def _fmt(v, spec=".3f"):
    return "-" if v is None else format(v, spec)


def summarise(results):
    """Per task and arm: means over seeds, and ratios to (a) computed seed by seed in the same run."""
    runs = results["runs"]
    rows = []
    order = results["meta"]["settings"]["tasks"]
    for task in sorted(dict.fromkeys(r["task"] for r in runs), key=lambda t: order.index(t) if t in order else 99):
        base = {r["seed"]: r for r in runs if r["task"] == task and r["arm"] == "lora_all"}
        for arm, label in ARMS:
            group = [r for r in runs if r["task"] == task and r["arm"] == arm]
            if not group:
                continue
            ratios_t, ratios_m, ratios_g = [], [], []
            for r in group:
                b = base.get(r["seed"])
                if b is None or arm == "zero_shot":
                    continue
                ratios_t.append((r["search_seconds"] + r["finetune_seconds"]) / b["finetune_seconds"])
                ratios_m.append(r["peak_rss_mb"] / b["peak_rss_mb"])
                if b["peak_growth_mb"] > 0:
                    ratios_g.append(r["peak_growth_mb"] / b["peak_growth_mb"])
            rows.append({
                "task": task, "arm": arm, "label": label, "n": len(group), "seeds": [r["seed"] for r in group],
                "accuracy": _mean([r["accuracy"] for r in group]), "accuracy_sd": _sd([r["accuracy"] for r in group]),
                "answer_loss": _mean([r["answer_loss"] for r in group]),
                "trainable_params": _mean([r["trainable_params"] for r in group]),
                "search_seconds": _mean([r.get("search_seconds") for r in group]),
                "finetune_seconds": _mean([r.get("finetune_seconds") for r in group]),
                "time_ratio": _mean(ratios_t), "peak_rss_ratio": _mean(ratios_m), "growth_ratio": _mean(ratios_g),
                "search_over_finetune": _mean([r["search_seconds"] / r["finetune_seconds"] for r in group
                                               if r.get("search_seconds")]),
                "selected": [r.get("selected_layers") for r in group],
                "chance": group[0].get("chance"),
            })
    return rows


def markdown(results):
    meta = results["meta"]
    s = meta["settings"]
    lines = [f"# Flexora benchmark ({meta['profile']} profile)", "",
             f"SmolLM2-135M-Instruct, LoRA r={meta['lora']['r']} alpha={meta['lora']['lora_alpha']} on "
             f"{'/'.join(meta['lora']['target_modules'])}; {s['n_train']} train / {s['n_test']} test examples per task "
             f"(fixed split seed 1234); {s['max_steps']} fine-tune steps x batch {meta['batch_size']}, "
             f"lr {meta['learning_rate']} constant, max_length {meta['max_length']}, gradient checkpointing off; "
             "Flexora search: "
             f"search_samples={s['search_samples']}, holdout={s['holdout']}, 1 validation batch per outer step. "
             f"Machine: {meta['machine']['cpu']}, {meta['machine']['cores']} cores, "
             f"{meta.get('workers', 1)} worker processes x {meta['torch_threads']} torch thread. Memory: {meta['memory_method']}.", "",
             "Ratios are vs (a) of the same seed in the same run; time ratio = (search + fine-tune) / (a) fine-tune; "
             "accuracy is mean (sd) over the seeds listed.", "",
             "| task | arm | seeds | accuracy | answer loss | LoRA params | search s | fine-tune s | search/FT | "
             "time vs (a) | peak RSS vs (a) | RSS growth vs (a) | selected blocks |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in summarise(results):
        sel = r["selected"]
        sel_txt = "all" if r["arm"] == "lora_all" else ("-" if r["arm"] == "zero_shot" else
                  "; ".join(",".join(map(str, x)) for x in sel if x))
        acc = f"{r['accuracy']:.3f}" + (f" ({r['accuracy_sd']:.3f})" if r["n"] > 1 else "")
        if r["arm"] == "zero_shot" and r.get("chance"):
            acc += f" [chance {r['chance']:.2f}]"
        lines.append(
            f"| {r['task']} | {r['label']} | {','.join('-' if x is None else str(x) for x in r['seeds'])} | {acc} | "
            f"{_fmt(r['answer_loss'])} | {_fmt(r['trainable_params'], ',.0f')} | {_fmt(r['search_seconds'], '.1f')} | "
            f"{_fmt(r['finetune_seconds'], '.1f')} | {_fmt(r['search_over_finetune'], '.2f')} | "
            f"{_fmt(r['time_ratio'], '.2f')} | {_fmt(r['peak_rss_ratio'], '.2f')} | {_fmt(r['growth_ratio'], '.2f')} | "
            f"{sel_txt} |")
    if results.get("planted"):
        lines += ["", "## Planted-layer recovery", "",
                  "| hypergradient | planted | selected | precision | recall | top-6 by alpha | top-6 precision | "
                  "chance precision | search s | teacher answers != base |", "|---|---|---|---|---|---|---|---|---|---|"]
        for r in results["planted"]:
            lines.append(f"| {r['arm'].replace('planted_', '')} | {r['planted_blocks']} | {r['selected_layers']} | "
                         f"{r['precision']:.2f} | {r['recall']:.2f} | {r['topk_selected']} | {r['topk_precision']:.2f} | "
                         f"{r['chance_precision']:.2f} | {r['search_seconds']:.1f} | "
                         f"{r['teacher']['fraction_answers_differing_from_base']:.2f} |")
    if results.get("budget"):
        budget = sorted(results["budget"], key=lambda r: r["search_samples"])
        largest = set(budget[-1]["selected_layers"])
        ft = [r["finetune_seconds"] for r in results["runs"]
              if r["arm"] == "flexora" and r["task"] == s["budget_task"]]
        ft = _mean(ft)
        lines += ["", f"## Search budget ({s['budget_task']}, seed 0)", "",
                  "Jaccard is to the selection of the largest budget; search / fine-tune uses the mean fine-tune time "
                  "of the Flexora rows above on the same task.", "",
                  "| search samples | inner steps | search s | search / fine-tune | blocks | Jaccard to largest | selection |",
                  "|---|---|---|---|---|---|---|"]
        for r in budget:
            sel = set(r["selected_layers"])
            jac = len(sel & largest) / max(1, len(sel | largest))
            lines.append(f"| {r['search_samples']} | {r.get('search_inner_steps')} | {r['search_seconds']:.1f} | "
                         f"{_fmt(r['search_seconds'] / ft if ft else None, '.2f')} | {len(sel)} | {jac:.2f} | "
                         f"{sorted(sel)} |")
    if results.get("speed"):
        speed = {r["arm"]: r for r in results["speed"]}
        base = speed.get("speed_lora_all")
        upper = speed.get("speed_lora_upper")
        lines += ["", "## Fine-tune speed on the upper half (blocks "
                  f"{meta['speed_blocks'][0]}-{meta['speed_blocks'][-1]}), TRL's default gradient checkpointing on", "",
                  "No search (Flexora is given the blocks); same seed, data and steps. Plain LoRA on a block subset "
                  "still back-propagates (and recomputes) every block below it, because `enable_input_require_grads` "
                  "makes the embeddings' output require grad; Flexora stops the backward pass at its lowest block.", "",
                  "| run | LoRA params | steps | fine-tune s | s / step | vs LoRA all blocks | vs LoRA same blocks |",
                  "|---|---|---|---|---|---|---|"]
        names = {"speed_lora_all": "LoRA, all blocks (SFTTrainer)",
                 "speed_lora_upper": "LoRA, upper blocks (SFTTrainer, layers_to_transform)",
                 "speed_flexora_upper": "Flexora given the upper blocks"}
        for arm, label in names.items():
            r = speed.get(arm)
            if r is None:
                continue
            ratio_all = r["finetune_seconds"] / base["finetune_seconds"] if base else None
            ratio_upper = r["finetune_seconds"] / upper["finetune_seconds"] if upper else None
            lines.append(f"| {label} | {r['trainable_params']:,} | {r['finetune_steps']} | {r['finetune_seconds']:.1f} | "
                         f"{r['finetune_seconds'] / r['finetune_steps']:.2f} | {_fmt(ratio_all, '.2f')} | "
                         f"{_fmt(ratio_upper, '.2f')} |")
    lines += ["", f"Command: `{meta['command']}`; last update {meta.get('updated')}"
              + ("" if meta.get("finished") else " (run not finished: partial results)") + "."]
    return "\n".join(lines) + "\n"


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = summarise(results)
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    if not tasks:
        return
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    arms = [a for a, _ in ARMS]
    width = 0.8 / len(arms)
    for i, arm in enumerate(arms):
        xs, ys, es = [], [], []
        for t, task in enumerate(tasks):
            r = next((r for r in rows if r["task"] == task and r["arm"] == arm), None)
            if r:
                xs.append(t + i * width)
                ys.append(r["accuracy"])
                es.append(r["accuracy_sd"])
        if xs:
            axes[0].bar(xs, ys, width, yerr=es, label=dict(ARMS)[arm])
    axes[0].set_xticks([t + 0.4 - width / 2 for t in range(len(tasks))], tasks)
    axes[0].set_ylabel("held-out accuracy")
    axes[0].set_ylim(0, 1)
    axes[0].axhline(0.5, color="grey", lw=0.5, ls="--")
    axes[0].legend(fontsize=7)
    # Alpha per block for Flexora runs.
    for r in results["runs"]:
        if r["arm"] == "flexora" and r.get("alpha"):
            blocks = sorted(int(b) for b in r["alpha"])
            axes[1].plot(blocks, [r["alpha"][str(b)] for b in blocks], marker=".", label=f"{r['task']} s{r['seed']}")
    axes[1].axhline(0, color="grey", lw=0.5)
    axes[1].set_xlabel("block")
    axes[1].set_ylabel("alpha after search (selected: > 0)")
    axes[1].legend(fontsize=7)
    # Time and memory ratios vs LoRA.
    labels, t_ratio, m_ratio = [], [], []
    for r in rows:
        if r["arm"] in ("zero_shot", "lora_all"):
            continue
        labels.append(f"{r['task'][:10]}\n{r['arm'].replace('flexora_unrolled_', 'unr-')}")
        t_ratio.append(r["time_ratio"] or 0)
        m_ratio.append(r["growth_ratio"] or 0)
    xs = range(len(labels))
    axes[2].bar([x - 0.2 for x in xs], t_ratio, 0.4, label="time (search+FT) / LoRA")
    axes[2].bar([x + 0.2 for x in xs], m_ratio, 0.4, label="FT RSS growth / LoRA")
    axes[2].axhline(1.0, color="grey", lw=0.5)
    axes[2].set_xticks(list(xs), labels, fontsize=6)
    axes[2].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_reports(results, out_dir):
    out_dir = Path(out_dir)
    (out_dir / "results.md").write_text(markdown(results))
    plot(results, out_dir / "results.png")
