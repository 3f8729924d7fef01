"""Markdown and number formatting for the report: safe table cells, tables, percentages, sizes, durations."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import Any

MAX_CELL_CHARS = 200
# A markdown image link: `![alt](path)`; the path is what the report counts as a linked plot.
_IMAGE_LINK = re.compile(r"!\[[^\]]*\]\(([^)\s]+)\)")


def escape_cell(value: Any, max_chars: int | None = MAX_CELL_CHARS) -> str:
    """Make any value safe inside one markdown table cell.

    Truncation happens before escaping so an escape sequence is never cut in half. Newlines become `<br>`, and
    markdown/HTML punctuation is backslash-escaped so pool text cannot break the table or inject markup.

    Args:
        value: the cell content (stringified with `str`).
        max_chars: keep at most this many characters of the original text (an ellipsis marks the cut); None keeps all.

    Example:
    ```python
    >>> escape_cell("a|b\\nc")
    'a\\\\|b<br>c'
    ```
    """
    text = "" if value is None else str(value)
    if max_chars is not None and len(text) > max_chars:
        text = text[:max_chars].rstrip() + "…"
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    escaped = "".join("\\" + ch if ch in "\\`*_[]<>|~" else ch for ch in text)
    return escaped.replace("\n", "<br>")


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return lines


def image_links(text: str) -> list[str]:
    """The targets of every `![alt](path)` in `text`, in order."""
    return _IMAGE_LINK.findall(text)


def pct(numerator: float, denominator: float, digits: int = 1) -> str:
    return f"{100.0 * numerator / denominator:.{digits}f}%" if denominator else "n/a"


def num_bytes(num: float | None) -> str:
    if num is None:
        return "n/a"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(num) < 1024 or unit == "TB":
            return f"{num:.0f} {unit}" if unit == "B" else f"{num:.1f} {unit}"
        num /= 1024
    return f"{num:.1f} TB"


def seconds(value: float | None) -> str:
    if value is None:
        return "n/a"
    if value < 120:
        return f"{value:.2f} s"
    return f"{value / 60:.1f} min" if value < 7200 else f"{value / 3600:.2f} h"


def dir_bytes(path: str) -> int | None:
    if os.path.isfile(path):
        return os.path.getsize(path)
    if not os.path.isdir(path):
        return None
    return sum(os.path.getsize(os.path.join(base, name)) for base, _, files in os.walk(path) for name in files)


def message_text(messages: Any) -> str:
    """A chat (`messages` column) as `role: content` lines; multimodal content keeps its text parts."""
    if not isinstance(messages, list):
        return str(messages)
    parts = []
    for message in messages:
        if isinstance(message, dict):
            content = message.get("content", "")
            if isinstance(content, list):
                content = " ".join(str(p.get("text", "")) if isinstance(p, dict) else str(p) for p in content)
            parts.append(f"{message.get('role', '?')}: {content}")
        else:
            parts.append(str(message))
    return "\n".join(parts)
