"""Reports from records alone (no torch): the one-screen teacher-vs-artifact table."""

from __future__ import annotations


def _row(name: str, m: dict) -> str:
    return (f"{name:<10} {100 * m['val_accuracy']:>7.2f}% {100 * m['test_accuracy']:>7.2f}% "
            f"{m['latency_p50_ms']:>9.3f} {m['latency_p95_ms']:>9.3f} {m['params']:>10,} "
            f"{m['macs'] / 1e6:>8.2f} {m['size_bytes'] / 1024:>9.1f}")


def summary_table(summary: dict) -> str:
    head = (f"{'model':<10} {'val acc':>8} {'test acc':>8} {'p50 ms':>9} {'p95 ms':>9} {'params':>10} "
            f"{'MMACs':>8} {'size KiB':>9}")
    lines = [head, "-" * len(head), _row("teacher", summary["teacher"]), _row("artifact", summary["artifact"]),
             "-" * len(head),
             f"speedup p50: {summary['speedup_p50']:.1f}x   accuracy drop: {summary['accuracy_drop_pp']:+.2f} pp   "
             f"(batch {summary['target']['batch_size']}, {summary['target']['threads']} thread(s), "
             f"{summary['target']['device']})"]
    return "\n".join(lines)


def print_summary(summary: dict) -> None:
    print()
    print(summary_table(summary))
    if "output_dir" in summary:
        print(f"\nresults: {summary['output_dir']}/  (model.onnx, metrics.json, summary.json, recipe.yaml)")
