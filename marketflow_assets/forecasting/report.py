"""The evaluation table as text (``marketflow forecast``) and Markdown (Dagster metadata)."""

from __future__ import annotations

import math

import pandas as pd

COLUMNS = (
    ("model", "model"),
    ("n", "n"),
    ("mae", "MAE %"),
    ("mase", "MASE"),
    ("directional_accuracy", "dir. acc."),
    ("coverage_80", "coverage 80%"),
    ("dm_pvalue", "DM p"),
    ("promoted", "promoted"),
)


def _cell(value) -> str:
    if hasattr(value, "item"):  # numpy scalar
        value = value.item()
    if isinstance(value, bool):
        return "yes" if value else ""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1e-3 and value != 0 else f"{value:.4f}"
    return str(value)


def rows(table: pd.DataFrame) -> list[list[str]]:
    out = []
    for record in table.to_dict("records"):
        out.append([_cell(record.get(key)) for key, _ in COLUMNS])
    return out


def text(table: pd.DataFrame) -> str:
    """Aligned plain-text table."""
    header = [label for _, label in COLUMNS]
    body = rows(table)
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in body]
    return "\n".join(line.rstrip() for line in lines)


def markdown(table: pd.DataFrame) -> str:
    header = [label for _, label in COLUMNS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows(table)]
    return "\n".join(lines)
