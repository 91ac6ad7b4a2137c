"""A report folder: report.md, the same as report.html, figures beside them, every number in results.json.

Sections are Markdown strings (the circuits runner already writes its sections that way), so
the HTML is rendered from the Markdown with the `markdown` package rather than kept twice.
"""

from __future__ import annotations

import html
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from interp import result_io

_CSS = ("body{font-family:sans-serif;max-width:1000px;margin:2em auto;line-height:1.45;padding:0 1em}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px}"
        "th{background:#f3f3f3}img{max-width:100%}code{background:#f4f4f4}")


INCOMPLETE_BANNER = ("> **Incomplete report**: this run has not finished (it is still running, or it was "
                     "interrupted); the sections below are what it measured so far. Rerun the same command to "
                     "resume.\n\n")


def atomic_write_text(path: Path, text: str) -> None:
    """Write UTF-8 text atomically (`interp.result_io.atomic_write_text`, the one writer)."""
    result_io.atomic_write_text(path, text)


def jsonable(obj: Any) -> Any:
    """Results objects (with `to_json`), dataclass-like containers and tensors -> plain JSON."""
    if hasattr(obj, "to_json"):
        return jsonable(obj.to_json())
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    if hasattr(obj, "__dict__"):
        return jsonable(vars(obj))
    return str(obj)


@dataclass
class Report:
    """Collects Markdown sections and results; `write()` produces the three files."""

    out_dir: Path
    title: str
    sections: list[str] = field(default_factory=list)
    results: dict[str, Any] = field(default_factory=dict)
    complete: bool = False  # until `finish()`, every write carries the "incomplete" banner

    def __post_init__(self) -> None:
        self.out_dir = Path(self.out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)

    def add(self, markdown: str) -> None:
        self.sections.append(markdown.strip() + "\n")

    def record(self, key: str, value: Any) -> None:
        self.results[key] = jsonable(value)

    def markdown(self) -> str:
        return f"# {self.title}\n\n" + "\n".join(self.sections)

    def write(self) -> Path:
        import markdown

        from interp import distributed

        self.record("world_size", distributed.world_size())  # processes that shared the generation
        if self.complete:
            self.results.pop("incomplete", None)
            md = self.markdown()
        else:
            self.results["incomplete"] = True
            md = INCOMPLETE_BANNER + self.markdown()
        conv = markdown.Markdown(extensions=["tables", "fenced_code"])
        # Raw HTML in any section (a --pipeline path, a label) is shown as text, never run as markup.
        conv.preprocessors.deregister("html_block")
        conv.inlinePatterns.deregister("html")
        body = conv.convert(md)
        page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(self.title)}</title>"
                f"<style>{_CSS}</style></head><body>{body}</body></html>")
        atomic_write_text(self.out_dir / "report.md", md)
        atomic_write_text(self.out_dir / "report.html", page)
        atomic_write_text(self.out_dir / "results.json", json.dumps(self.results, indent=2, ensure_ascii=False))
        return self.out_dir / "report.md"

    def finish(self) -> Path:
        """The final write: the report without the "incomplete" banner."""
        self.complete = True
        return self.write()
