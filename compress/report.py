"""Reports from records alone (no torch): the one-screen teacher-vs-artifact table."""

from __future__ import annotations

from compress.io import write_text_atomic


def mmacs(macs: int | None) -> str:
    """MACs in millions; "n/a" for a teacher whose operations cannot be counted (TorchScript, ONNX)."""
    return "n/a" if macs is None else f"{macs / 1e6:.2f}"


def _row(name: str, m: dict) -> str:
    return (f"{name:<10} {100 * m['val_accuracy']:>7.2f}% {100 * m['test_accuracy']:>7.2f}% "
            f"{m['latency_p50_ms']:>9.3f} {m['latency_p95_ms']:>9.3f} {m['params']:>10,} "
            f"{mmacs(m['macs']):>8} {m['size_bytes'] / 1024:>9.1f}")


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


# ---- the search report: works from records (dicts) alone, no torch ----



# latency_measured: "final" for numbers from the closing measurement (the front: each model alone, with the
# interleaved figures beside them), "trial" for the cheaper one taken when the trial ran.
CSV_COLUMNS = ["trial", "state", "feasible", "pareto", "val_accuracy", "test_accuracy", "test_accuracy_ci95_low",
               "test_accuracy_ci95_high", "latency_p50_ms",
               "latency_p95_ms", "latency_p99_ms", "throughput_sps", "latency_measured", "schedule", "params", "macs",
               "size_bytes", "int8"]


def write_csv(path, rows: list[dict], param_keys: list[str]) -> None:
    """Trial records as CSV: the fixed CSV_COLUMNS, then one ``params.<key>`` column per searched key."""
    def ci(r: dict, i: int):
        return r["test_accuracy_ci95"][i] if r.get("test_accuracy_ci95") else None

    write_csv_rows(path, [{**{k: r.get(k) for k in CSV_COLUMNS}, "test_accuracy_ci95_low": ci(r, 0),
                           "test_accuracy_ci95_high": ci(r, 1),
                           **{f"params.{k}": r.get("params_", {}).get(k) for k in param_keys}} for r in rows])


def _label(r: dict) -> str:
    return ", ".join(f"{k.split('.')[-1]}={v:.3g}" if isinstance(v, float) else f"{k.split('.')[-1]}={v}"
                     for k, v in r.get("params_", {}).items())


def plot_pareto_png(path, trials: list[dict], refs: dict[str, dict], slo_p95_ms: float | None, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 5.2), dpi=120)
    feas = [t for t in trials if t["feasible"] and not t["pareto"]]
    infeas = [t for t in trials if not t["feasible"] and not t["pareto"]]
    front = sorted([t for t in trials if t["pareto"]], key=lambda t: t["latency_p95_ms"])
    ax.scatter([t["latency_p95_ms"] for t in feas], [100 * t["val_accuracy"] for t in feas], c="#9aa5b1", s=22,
               label="trial")
    ax.scatter([t["latency_p95_ms"] for t in infeas], [100 * t["val_accuracy"] for t in infeas], c="#e07a5f",
               marker="x", s=26, label="trial, misses the service level")
    ax.step([t["latency_p95_ms"] for t in front], [100 * t["val_accuracy"] for t in front], where="post",
            c="#3d5a80", lw=1.2)
    ax.scatter([t["latency_p95_ms"] for t in front], [100 * t["val_accuracy"] for t in front], c="#3d5a80", s=40,
               zorder=3, label="Pareto front")
    markers = {"teacher": ("*", "#111111")}
    for i, (name, r) in enumerate(refs.items()):
        m, c = markers.get(name, ("DsP^v"[i % 5], f"C{i + 1}"))
        ax.scatter([r["latency_p95_ms"]], [100 * r["val_accuracy"]], marker=m, c=c, s=110, zorder=4,
                   edgecolors="white", label=name)
    chosen = [t for t in trials if t.get("chosen")]
    if chosen:
        ax.scatter([chosen[0]["latency_p95_ms"]], [100 * chosen[0]["val_accuracy"]], s=180, facecolors="none",
                   edgecolors="#2a9d8f", linewidths=2, zorder=5, label="chosen artifact")
    if slo_p95_ms:
        ax.axvline(slo_p95_ms, ls="--", c="#2a9d8f", lw=1)
        ax.text(slo_p95_ms, ax.get_ylim()[0], f" p95 <= {slo_p95_ms:g} ms", color="#2a9d8f", va="bottom", fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("latency p95 per request (ms, log scale)")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_pareto_html(path, trials: list[dict], refs: dict[str, dict], slo_p95_ms: float | None, title: str) -> None:
    import plotly.graph_objects as go

    def hover(r):
        return (f"val {100 * r['val_accuracy']:.2f}% test {100 * r['test_accuracy']:.2f}%<br>p50 {r['latency_p50_ms']:.3f} "
                f"ms p95 {r['latency_p95_ms']:.3f} ms<br>{r['params']:,} params, {mmacs(r['macs'])} MMACs"
                f"<br>{_label(r)}")

    fig = go.Figure()
    groups = [("trial", lambda t: t["feasible"] and not t["pareto"], dict(color="#9aa5b1", size=7)),
              ("trial, misses the service level", lambda t: not t["feasible"], dict(color="#e07a5f", size=8, symbol="x")),
              ("Pareto front", lambda t: t["pareto"] and t["feasible"], dict(color="#3d5a80", size=10))]
    for name, pick, marker in groups:
        sel = [t for t in trials if pick(t)]
        fig.add_trace(go.Scatter(x=[t["latency_p95_ms"] for t in sel], y=[100 * t["val_accuracy"] for t in sel],
                                 mode="markers", name=name, marker=marker, text=[f"trial #{t['trial']}<br>" + hover(t) for t in sel],
                                 hoverinfo="text"))
    for name, r in refs.items():
        fig.add_trace(go.Scatter(x=[r["latency_p95_ms"]], y=[100 * r["val_accuracy"]], mode="markers+text", name=name,
                                 text=[name], textposition="top center", hovertext=[hover(r)], hoverinfo="text",
                                 marker=dict(size=14, symbol="star" if name == "teacher" else "diamond")))
    if slo_p95_ms:
        fig.add_vline(x=slo_p95_ms, line_dash="dash", line_color="#2a9d8f",
                      annotation_text=f"service level p95 <= {slo_p95_ms:g} ms")
    fig.update_layout(title=title, xaxis_title="latency p95 per request (ms)", yaxis_title="validation accuracy (%)",
                      xaxis_type="log", template="plotly_white")
    fig.write_html(str(path), include_plotlyjs=True, full_html=True)


def bench_table(rows: list[dict], baseline: str | None = None) -> str:
    """The `compress bench` table; with ``baseline``, each row's p50 speed-up over it at the same setting."""
    head = (f"{'model':<16} {'batch':>5} {'thr':>3} {'p50 ms':>8} {'p90':>8} {'p95':>8} {'p99':>8} {'mean':>8} "
            f"{'std':>7} {'p50 95% CI':>17} {'p95 95% CI':>17} {'runs':>5} {'samples/s':>10}" + ("  speedup" if baseline else ""))
    lines = [head, "-" * len(head)]
    ref = {(r["batch_size"], r["threads"]): r["p50_ms"] for r in rows if r["model"] == baseline}
    for r in rows:
        lo, hi = r["p50_ci95_ms"]
        lo95, hi95 = r["p95_ci95_ms"]
        line = (f"{r['model'][:16]:<16} {r['batch_size']:>5} {r['threads']:>3} {r['p50_ms']:>8.3f} {r['p90_ms']:>8.3f} "
                f"{r['p95_ms']:>8.3f} {r['p99_ms']:>8.3f} {r['mean_ms']:>8.3f} {r['std_ms']:>7.3f} "
                f"{f'[{lo:.3f}, {hi:.3f}]':>17} {f'[{lo95:.3f}, {hi95:.3f}]':>17} {r['n_runs']:>5} {r['throughput_sps']:>10.0f}")
        if baseline:
            line += f"  {ref[(r['batch_size'], r['threads'])] / r['p50_ms']:>6.2f}x"
        if r.get("noisy"):
            line += "  (noisy)"
        lines.append(line)
    return "\n".join(lines)


def write_csv_rows(path, rows: list[dict]) -> None:
    """Rows of flat dicts (the capacity sweep) as CSV, columns in first-seen order."""
    import csv
    import io


    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols)
    w.writeheader()
    for r in rows:
        w.writerow({k: (f"{v[0]:.6g}-{v[1]:.6g}" if isinstance(v, (tuple, list)) else v) for k, v in r.items()})
    write_text_atomic(path, buf.getvalue())


def verdict_text(v: dict) -> str:
    """One baseline's verdict (its ``versus_front``) in words."""
    if v["verdict"] == "dominated":
        return f"dominated by trial {v['trial']}: {v.get('why') or 'more accurate'} (McNemar p = {v['p_value']:.3g})"
    if v["verdict"] == "not distinguishable":
        return f"not distinguishable from trial {v['trial']} in accuracy at equal latency (McNemar p = {v['p_value']:.3g})"
    if v["trial"] is not None:
        return f"NOT dominated: more accurate than trial {v['trial']}, the best as fast (McNemar p = {v['p_value']:.3g})"
    return "NOT dominated: faster than every front member"


def print_study_summary(summary: dict) -> None:
    print()
    print(summary_table(summary))
    slow = summary.get("n_trials_untrained_too_slow")
    short, late = summary.get("n_trials_short_schedule"), summary.get("n_trials_short_for_budget")
    behind, rejected = summary.get("n_trials_short_behind_front"), summary.get("n_trials_int8_rejected")
    why = [f"{late} for the time budget"] * bool(late) + [f"{behind} as they could not reach the front"] * bool(behind)
    print(f"trials: {summary['n_trials_complete']} complete"
          + (f", {slow} too slow to train (timed untrained)" if slow else "")
          + (f", {rejected} finished in fp32 (int8 failed its parity gate)" if rejected else "")
          + (f"; {short} kept their short schedule" + (f" (of them: {', '.join(why)})" if why else "")
             + f", {summary['n_trials_promoted']} promoted to the full one"
             if short or summary.get("n_trials_promoted") else "") + "; "
          f"Pareto front: {summary['pareto_size']} spanning {summary['pareto_latency_span']:.1f}x in p50")
    if summary.get("chosen_tied_with"):
        print(f"artifact: trial {summary['chosen_trial']}, the fastest feasible one as accurate on validation as "
              f"trial(s) {', '.join(map(str, summary['chosen_tied_with']))} (McNemar p >= 0.05)")
    for k, b in summary["baselines"].items():
        print(f"baseline {k:<20} test {100 * b['test_accuracy']:.2f}%  p95 {b['latency_p95_ms']:.3f} ms  "
              f"{verdict_text(b['versus_front'])}")
    for k, why in summary.get("baselines_failed", {}).items():
        print(f"baseline {k:<20} NOT BUILT: {why.splitlines()[0][:160]}")
    for key, who in (("artifact_vs_runner_up", "runner-up"), ("artifact_vs_teacher", "teacher")):
        c = summary.get(key)
        if c:
            name = f"runner-up trial {c['trial']}" if "trial" in c else who
            print(f"artifact vs {name} (test {100 * c['test_accuracy']:.2f}%): {c['verdict']} "
                  f"(McNemar p = {c['p_value']:.3g})")
    if summary.get("phases_s"):
        phases = (f"{k.replace('_', ' ')} {v / 60:.1f}" for k, v in summary["phases_s"].items() if v >= 3)
        print(f"wall time {summary['wall_time_s'] / 60:.1f} min: {', '.join(phases)} (minutes)")
    budget = summary.get("wall_time_budget")
    if budget:
        print(f"run budget {budget['wall_time_s'] / 60:.1f} min (search.wall_time_s): after the search, "
              f"{budget['predicted_after_search_s'] / 60:.1f} min predicted, {budget['after_search_s'] / 60:.1f} taken")
    if "hypervolume" in summary:
        print(f"front hypervolume: {summary['hypervolume']['value']:.4f} "
              f"({summary['hypervolume']['x']} x {summary['hypervolume']['y']})")
    cap, tcap = summary.get("capacity"), summary.get("capacity_teacher")
    if cap and tcap and "batch" in cap:
        print(f"batch requirement: teacher needs {tcap['batch']['cores']} cores ({tcap['batch']['cost_per_run']:.2f} "
              f"per run), the artifact {cap['batch']['cores']} ({cap['batch']['cost_per_run']:.2f} per run); "
              "see capacity.md")
    if summary["slo_met"]:
        print(f"service level met: p95 {summary['artifact']['latency_p95_ms']:.3f} ms <= {summary['slo_p95_ms']} ms")
    else:
        print("!" * 78)
        print(f"!! NO TRIAL MEETS THE SERVICE LEVEL (p95 <= {summary['slo_p95_ms']} ms, accuracy drop <= "
              f"{summary['slo_max_accuracy_drop_pp']} pp).")
        print(f"!! The artifact is the {summary['chosen_because'].split(': ')[-1]}; slo_met is false.")
        print("!! Widen the search space, allow more trials, or relax the service level.")
        print("!" * 78)
