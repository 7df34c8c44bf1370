"""
One table from a set of ``dvr fit`` runs (and their ``dvr eval`` reports): training steps and
seconds, held-out PSNR (inside the mask) and mask IoU, and the mesh scores, full and on the
observed region. Writes ``OUT.md`` and ``OUT.json``.

    python -m integration.gpu_runs.summarise_fits --work /tmp/photographs \
        --runs dtu_current dtu_viewdep --out outputs/gpu_runs/summary

Mesh scores are in the Occupancy Networks units of ``dvr eval`` (the ground truth's bounding
box has longest side 1); PSNR in dB.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from typing import Any, Optional


def _load(path: str) -> dict[str, Any]:
    if not os.path.isfile(path):
        return {}
    with open(path) as handle:
        return json.load(handle)


def _at_one_percent(report: dict[str, Any], key: str) -> Optional[float]:
    """The value of the per-threshold list ``key`` at the threshold closest to 0.01."""
    values, thresholds = report.get(key), report.get("thresholds")
    if isinstance(values, (int, float)):
        return float(values)
    if not values or not thresholds:
        return None
    index = min(range(len(thresholds)), key=lambda i: abs(thresholds[i] - 0.01))
    return float(values[index])


def summarise_run(work: str, name: str) -> dict[str, Any]:
    """The numbers of run ``name`` in ``work`` (missing ones are ``None``)."""
    fit = _load(os.path.join(work, name, "metrics.json"))
    evaluation = _load(os.path.join(work, name, "eval", "metrics.json"))
    held = fit.get("held_out", {})
    train = fit.get("train", {})
    row: dict[str, Any] = {
        "run": name,
        "status": fit.get("status", "missing" if not fit else "?"),
        "steps": train.get("iterations"),
        "train_s": train.get("seconds"),
        "psnr_masked": held.get("psnr_masked"),
        "psnr": held.get("psnr"),
        "mask_iou": held.get("mask_iou"),
        "chamfer_l1": evaluation.get("chamfer_l1"),
        "f_score": _at_one_percent(evaluation, "f_score"),
        "normal_consistency": evaluation.get("normal_consistency"),
        "observed_chamfer_l1": evaluation.get("observed_chamfer_l1"),
        "observed_f_score": _at_one_percent(evaluation, "observed_f_score"),
        "observed_normal_consistency": evaluation.get("observed_normal_consistency"),
    }
    return row


COLUMNS = (
    ("run", "run", "{}"),
    ("status", "status", "{}"),
    ("steps", "steps", "{}"),
    ("train_s", "train s", "{:.0f}"),
    ("psnr_masked", "PSNR in mask", "{:.2f}"),
    ("mask_iou", "mask IoU", "{:.3f}"),
    ("chamfer_l1", "Chamfer-L1", "{:.4f}"),
    ("f_score", "F@1%", "{:.3f}"),
    ("normal_consistency", "NC", "{:.3f}"),
    ("observed_chamfer_l1", "obs. Chamfer-L1", "{:.4f}"),
    ("observed_f_score", "obs. F@1%", "{:.3f}"),
    ("observed_normal_consistency", "obs. NC", "{:.3f}"),
)


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| " + " | ".join(title for _, title, _ in COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    for row in rows:
        cells = []
        for key, _, fmt in COLUMNS:
            value = row.get(key)
            if value is None or (isinstance(value, float) and not math.isfinite(value)):
                cells.append("-")
            else:
                cells.append(fmt.format(value))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", required=True, help="folder holding the run folders")
    parser.add_argument("--runs", nargs="+", required=True, help="run folder names")
    parser.add_argument("--out", required=True, help="output path without extension")
    args = parser.parse_args(argv)
    rows = [summarise_run(args.work, name) for name in args.runs]
    table = markdown(rows)
    with open(args.out + ".md", "w") as handle:
        handle.write(table)
    with open(args.out + ".json", "w") as handle:
        json.dump(rows, handle, indent=2)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
