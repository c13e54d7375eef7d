"""Sections of docs generated from committed results, found and replaced in one way.

A section runs from its begin marker to its end marker, both included (each bench's
``markdown`` renders the markers too). Benchmarks ``replace`` it; the doc tests compare
``section`` with what the committed JSON renders to.
"""

from __future__ import annotations

from pathlib import Path


def _bounds(text: str, begin: str, end: str) -> tuple[int, int]:
    start = text.index(begin)
    return start, text.index(end, start) + len(end)


def section(doc: Path, begin: str, end: str) -> str:
    """The generated section of ``doc``, markers included."""
    text = doc.read_text()
    start, stop = _bounds(text, begin, end)
    return text[start:stop]


def replace(doc: Path, begin: str, end: str, rendered: str) -> None:
    """Write ``rendered`` (markers included) over the generated section of ``doc``."""
    text = doc.read_text()
    start, stop = _bounds(text, begin, end)
    doc.write_text(text[:start] + rendered + text[stop:])
