"""Is the latency protocol repeatable? The same pair of models measured in N separate processes.

Each process runs ``compress bench A --vs B --json``: fresh sessions, fresh warm-up, interleaved timing.
The coefficient of variation (sample std / mean) of each model's p50 and of their ratio across processes
says how far one number can be trusted.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from compress.io import write_json_atomic


def _cv(values: list[float]) -> float:
    return statistics.stdev(values) / statistics.fmean(values) if len(values) > 1 else 0.0


def stability(teacher: str, artifact: str, processes: int = 5, max_seconds: float = 5.0, out: str | None = None,
              min_runs: int = 200) -> dict:
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(processes):
            path = Path(tmp) / f"{i}.json"
            cmd = [sys.executable, "-m", "compress", "bench", artifact, "--vs", teacher, "--max-seconds",
                   str(max_seconds), "--min-runs", str(min_runs), "--json", str(path)]
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            report = json.loads(path.read_text())
            t = next(r for r in report["rows"] if r["model"] == report["baseline"])
            a = next(r for r in report["rows"] if r["model"] != report["baseline"])
            runs.append({"p50_teacher_ms": t["p50_ms"], "p50_artifact_ms": a["p50_ms"],
                         "speedup": t["p50_ms"] / a["p50_ms"], "n_runs": [t["n_runs"], a["n_runs"]],
                         "noisy": [t["noisy"], a["noisy"]]})
            print(f"process {i + 1}/{processes}: teacher p50 {t['p50_ms']:.4f} ms, artifact p50 {a['p50_ms']:.4f} ms, "
                  f"speedup {runs[-1]['speedup']:.2f}x", flush=True)
    result = {
        "p50_cv_teacher": _cv([r["p50_teacher_ms"] for r in runs]),
        "p50_cv_artifact": _cv([r["p50_artifact_ms"] for r in runs]),
        "speedup_cv": _cv([r["speedup"] for r in runs]),
        "processes": processes,
        "min_runs": min_runs,
        "teacher": teacher,
        "artifact": artifact,
        "runs": runs,
        "command": "compress " + " ".join(sys.argv[1:]) if sys.argv and "stability" in sys.argv else None,
    }
    if out:
        write_json_atomic(out, result)
    return result
