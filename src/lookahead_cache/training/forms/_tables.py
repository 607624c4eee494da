"""Rows of the generated tables, as a markdown table or a CSV file."""

from __future__ import annotations


def row_line(cells: list[str], markdown: bool) -> str:
    return f"| {' | '.join(cells)} |" if markdown else ",".join(cells)


def header_lines(headers: list[str], markdown: bool) -> list[str]:
    """The lines that start a markdown table (header and rule) or a CSV file (header)."""
    if markdown:
        return [row_line(headers, markdown), row_line(["---"] * len(headers), markdown)]
    return [row_line(headers, markdown)]
