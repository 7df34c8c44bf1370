"""
One table from several runs of ``bench_core --targets --profile``: two revisions of the code
(for example the tree before and after a refactor), run alternately in fresh processes on the
same GPU, compared case by case.

    python -m integration.benchmarks.side_by_side --run base=out/base_1 --run head=out/head_1 \
        --run base=out/base_2 --run head=out/head_2 --out out/targets_side_by_side.md

Each ``--run LABEL=FOLDER`` names a folder holding ``bench_core.json``. Runs with the same
label are rounds of one revision: the table gives each round and their median, and the last
column the median of the second label against the first. Times are milliseconds of wall-clock
time (median over the benchmark's repeats), memory is the peak of the CUDA caching allocator
in MiB.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from collections.abc import Sequence
from typing import Any, Optional

# (row title, path into the summary, unit): the cases the performance targets are about
CASES: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("render 256x256, 128 steps, grid + TF32 secant", ("render_256_128_ms", "grid tf32"), "ms"),
    (
        "render 256x256, grid + TF32 secant + graphs",
        ("render_256_128_ms", "grid tf32 graphs"),
        "ms",
    ),
    ("render 256x256, dense", ("render_256_128_ms", "dense"), "ms"),
    (
        "train 4096 rays, 128 steps, grid + TF32 + graphs",
        ("train_4096_128", "grid tf32 graphs", "ms"),
        "ms",
    ),
    (
        "  ... its peak memory",
        ("train_4096_128", "grid tf32 graphs", "peak_mib"),
        "MiB",
    ),
    ("train 4096 rays, 128 steps, grid + TF32", ("train_4096_128", "grid tf32", "ms"), "ms"),
    ("train 4096 rays, 128 steps, default", ("train_4096_128", "default", "ms"), "ms"),
    ("train 4096 rays, 128 steps, dense", ("train_4096_128", "dense", "ms"), "ms"),
    ("train 4096 rays, 128 steps, PyTorch3D volume", ("train_4096_128", "volume", "ms"), "ms"),
    (
        "peak spread 16 -> 1024 steps (graphs)",
        ("train_4096_peak_over_steps", "grid tf32 graphs", "spread"),
        "%",
    ),
)


def _lookup(summary: dict[str, Any], path: Sequence[str]) -> Optional[float]:
    value: Any = summary
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return float(value) if isinstance(value, (int, float)) else None


def load_runs(runs: Sequence[str]) -> list[tuple[str, dict[str, Any]]]:
    """
    Args:
        runs: ``LABEL=FOLDER`` items, each folder holding a ``bench_core.json``.

    Returns:
        ``(label, report)`` pairs in the given order.
    """
    loaded = []
    for item in runs:
        label, sep, folder = item.partition("=")
        if not sep or not label or not folder:
            raise ValueError(f"--run takes LABEL=FOLDER, got {item!r}.")
        path = os.path.join(folder, "bench_core.json")
        if not os.path.isfile(path):
            raise ValueError(f"No bench_core.json in {folder!r} (run {item!r}).")
        with open(path) as handle:
            loaded.append((label, json.load(handle)))
    return loaded


def _profile_sums(report: dict[str, Any]) -> dict[str, float]:
    """The synchronised total of each profiled training step, by mode."""
    sums = {}
    for entry in report.get("profile") or []:
        stages = entry.get("ms") if isinstance(entry, dict) else None
        if isinstance(stages, dict) and "total (synchronised stages)" in stages:
            sums[str(entry.get("mode"))] = float(stages["total (synchronised stages)"])
    return sums


def _format(value: Optional[float], unit: str) -> str:
    if value is None:
        return "-"
    if unit == "%":
        return f"{100 * value:.1f}%"
    if unit == "MiB":
        return f"{value:.0f}"
    return f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def side_by_side(runs: Sequence[tuple[str, dict[str, Any]]]) -> str:
    """
    The markdown table of the target cases, one column per run, the median per label, and the
    ratio of the second label's median to the first's.
    """
    labels = list(dict.fromkeys(label for label, _ in runs))
    if not runs:
        raise ValueError("side_by_side needs at least one run.")
    devices = sorted({str(report.get("device")) for _, report in runs})
    rows = [(title, path, unit) for title, path, unit in CASES]
    profile_modes = sorted({m for _, r in runs for m in _profile_sums(r)})
    header = [f"{label} #{i + 1}" for i, (label, _) in enumerate(runs)]
    header += [f"{label} median" for label in labels]
    if len(labels) == 2:
        header.append(f"{labels[1]} / {labels[0]}")
    lines = [
        f"Device: {', '.join(devices)}. Runs in the order they ran; times in ms, memory in MiB.",
        "",
        "| case | " + " | ".join(header) + " |",
        "|---" * (len(header) + 1) + "|",
    ]

    def add_row(title: str, values: list[Optional[float]], unit: str) -> None:
        medians = []
        for label in labels:
            mine = [
                v
                for (lab, _), v in zip(runs, values, strict=True)
                if lab == label and v is not None
            ]
            medians.append(statistics.median(mine) if mine else None)
        cells = [_format(v, unit) for v in values] + [_format(m, unit) for m in medians]
        if len(labels) == 2:
            a, b = medians
            cells.append(f"{b / a:.3f}" if a and b is not None else "-")
        lines.append(f"| {title} | " + " | ".join(cells) + " |")

    for title, path, unit in rows:
        add_row(title, [_lookup(r.get("summary") or {}, path) for _, r in runs], unit)
    for mode in profile_modes:
        add_row(
            f"profiled step, synchronised stages ({mode})",
            [_profile_sums(r).get(mode) for _, r in runs],
            "ms",
        )
    failures = {
        f"{label} #{i + 1}": (report.get("summary") or {}).get("accuracy_failures")
        for i, (label, report) in enumerate(runs)
    }
    lines += ["", "Accuracy failures (hits and depths against the float32 dense march):"]
    lines += [f"- {name}: {value if value else 'none'}" for name, value in failures.items()]
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1].strip())
    parser.add_argument("--run", action="append", required=True, help="LABEL=FOLDER")
    parser.add_argument("--out", default=None, help="markdown file to write")
    args = parser.parse_args(argv)
    text = side_by_side(load_runs(args.run))
    print(text)
    if args.out:
        with open(args.out, "w") as handle:
            handle.write(text)
    return text


if __name__ == "__main__":
    main()
