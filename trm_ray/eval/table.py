"""The metrics of an evaluation as text: the per-set table `trm-ray eval` prints, and the
Wilson-interval lines in the words of the alphaXiv fork's eval script.

    print(format_metrics(run.metrics))
"""

from __future__ import annotations


def format_metrics(metrics: dict[str, float], wilson_lines: bool = True) -> str:
    """A table: one row per set (and `all sets`), exact accuracy with its 95% interval; then,
    with wilson_lines, the same intervals as the alphaXiv fork's eval script prints them
    (format_wilson_lines). A text evaluation (text/val_loss present) gets its own table instead:
    whole-window exact accuracy says nothing about a language model."""
    if "text/val_loss" in metrics:
        return format_text_metrics(metrics)
    header = f"{'set':<16} {'count':>8} {'exact_accuracy':>14} {'95% interval':>18} {'accuracy':>9} {'q_halt_acc':>10}"
    lines = [header, "-" * len(header)]
    for label, prefix in _table_rows(metrics):
        interval = f"[{metrics[f'{prefix}/exact_accuracy_low']:.4f}, {metrics[f'{prefix}/exact_accuracy_high']:.4f}]"
        lines.append(f"{label:<16} {int(metrics[f'{prefix}/count']):>8} {metrics[f'{prefix}/exact_accuracy']:>14.4f} "
                     f"{interval:>18} {metrics[f'{prefix}/accuracy']:>9.4f} {metrics[f'{prefix}/q_halt_accuracy']:>10.4f}")
    if wilson_lines and (wilson := format_wilson_lines(metrics)):
        lines += ["", wilson]
    others = {k: v for k, v in metrics.items() if not k.startswith("eval/") and k != "eval"}
    if others:
        lines.append("")
        lines += [f"{k:<16} {v:.4f}" for k, v in others.items()]
    return "\n".join(lines)


def format_text_metrics(metrics: dict[str, float]) -> str:
    """The validation split of a text dataset: windows, label tokens, loss in nats per token,
    perplexity and next-token accuracy (trm_ray/text/evaluate.py), then any other metric."""
    header = f"{'split':<12} {'windows':>8} {'tokens':>10} {'val_loss':>9} {'perplexity':>10} {'next_token_acc':>14}"
    row = (f"{'validation':<12} {int(metrics.get('eval/count', 0)):>8} {int(metrics.get('text/tokens', 0)):>10} "
           f"{metrics['text/val_loss']:>9.4f} {metrics.get('text/perplexity', float('nan')):>10.3f} "
           f"{metrics.get('text/next_token_accuracy', float('nan')):>14.4f}")
    shown = {"text/val_loss", "text/perplexity", "text/next_token_accuracy", "text/tokens"}
    others = {k: v for k, v in metrics.items() if not k.startswith("eval/") and k != "eval" and k not in shown}
    lines = [header, "-" * len(header), row]
    if others:
        lines.append("")
        lines += [f"{k:<16} {v:.4f}" for k, v in others.items()]
    return "\n".join(lines)


def format_wilson_lines(metrics: dict[str, float]) -> str:
    """Each set's exact accuracy interval in the words of the alphaXiv fork's eval script, so
    numbers read off its logs compare at a glance (853 of 1000 rows exactly right):

          all.exact_accuracy 95% Wilson CI [82.97%, 87.36%] (N=1000)
            -> approx: 85.16 ± 2.19 %

    N is the number of rows with a label (the proportion's own denominator). The overall line
    (`all_sets`) comes only with several sets; with one it would repeat the set's. The fork
    also prints an interval for token accuracy over seq_len * puzzles "trials"; that is left
    out: the tokens of a row are not independent trials, so such an interval would be too narrow."""
    rows = _table_rows(metrics)
    if len(rows) == 2:  # one set, then `all sets` with the same numbers
        rows = rows[:1]
    lines = []
    for label, prefix in rows:
        name = "all_sets" if prefix == "eval" else label
        low, high = metrics[f"{prefix}/exact_accuracy_low"], metrics[f"{prefix}/exact_accuracy_high"]
        lines.append(f"  {name}.exact_accuracy 95% Wilson CI [{low * 100:.2f}%, {high * 100:.2f}%] "
                     f"(N={int(metrics[f'{prefix}/count'])})")
        lines.append(f"    -> approx: {(low + high) * 50:.2f} ± {(high - low) * 50:.2f} %")
    return "\n".join(lines)


def _table_rows(metrics: dict[str, float]) -> list[tuple[str, str]]:
    """(label, metric prefix) per set that has metrics, then ("all sets", "eval")."""
    prefixes = sorted({k.rsplit("/", 1)[0] for k in metrics if k.startswith("eval/") and k.count("/") == 2})
    candidates = [(p.split("/", 1)[1], p) for p in prefixes] + [("all sets", "eval")]
    return [(label, prefix) for label, prefix in candidates if f"{prefix}/count" in metrics]
