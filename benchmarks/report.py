"""Printing helpers: aligned tables and the ``name = X`` ratio lines that ``make bench`` shows."""

from __future__ import annotations

from collections.abc import Sequence


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Print ``rows`` under ``header`` as a Markdown-compatible table, preceded by ``title``."""
    cells = [list(map(str, header)), *[list(map(str, r)) for r in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]

    def line(row: Sequence[str]) -> str:
        return "| " + " | ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) + " |"

    print()
    print(f"### {title}")
    print(line(cells[0]))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in cells[1:]:
        print(line(row))
    print(flush=True)


def ratio_line(name: str, value: float, target: str | None = None, suffix: str = "") -> str:
    """Print and return ``name = value`` (plus the target, when there is one, and ``suffix``:
    e.g. the load average during the measurement)."""
    text = f"{name} = {value:.2f}"
    if target:
        text += f"   (target {target})"
    if suffix:
        text += f"   {suffix}"
    print(text, flush=True)
    return text
