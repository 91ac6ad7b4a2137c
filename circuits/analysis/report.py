"""A report folder: Markdown and HTML with the same content, figures beside them, every number in JSON.

Kept deliberately small: sections of paragraphs, tables (with CIs formatted by the caller) and
figures. The HTML is rendered from the same blocks, not from the Markdown text, so neither needs
a Markdown library.
"""

from __future__ import annotations

import html
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "–"
        return f"{value:.3f}"
    return str(value)


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "to_json"):
        return _jsonable(obj.to_json())
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    if isinstance(obj, Path):
        return str(obj)
    return repr(obj)


@dataclass
class Report:
    """Collects blocks in order; `write()` produces report.md, report.html and results.json."""

    out_dir: Path
    title: str
    blocks: list[tuple[str, Any]] = field(default_factory=list)
    results: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.out_dir = Path(self.out_dir)
        (self.out_dir / "figures").mkdir(parents=True, exist_ok=True)

    def figure_path(self, name: str) -> Path:
        """Where a figure called `name` (e.g. "delta_ca.png") should be saved."""
        return self.out_dir / "figures" / name

    def heading(self, text: str, level: int = 2) -> None:
        self.blocks.append(("heading", (level, text)))

    def text(self, text: str) -> None:
        self.blocks.append(("text", text))

    def table(self, rows: list[dict[str, Any]], columns: list[str] | None = None) -> None:
        if not rows:
            self.text("(no rows)")
            return
        columns = columns or list(rows[0])
        self.blocks.append(("table", (columns, [[_cell(r.get(c, "")) for c in columns] for r in rows])))

    def figure(self, path: Path, caption: str) -> None:
        rel = Path(path).resolve().relative_to(self.out_dir.resolve())
        self.blocks.append(("figure", (str(rel), caption)))

    def record(self, key: str, value: Any) -> None:
        """Store a number (or any JSON-able result) under `key` in results.json."""
        self.results[key] = _jsonable(value)

    def markdown(self) -> str:
        out = [f"# {self.title}", ""]
        for kind, body in self.blocks:
            if kind == "heading":
                level, text = body
                out += ["#" * level + " " + text, ""]
            elif kind == "text":
                out += [body, ""]
            elif kind == "table":
                columns, rows = body
                out.append("| " + " | ".join(columns) + " |")
                out.append("|" + "---|" * len(columns))
                out += ["| " + " | ".join(r) + " |" for r in rows]
                out.append("")
            elif kind == "figure":
                rel, caption = body
                out += [f"![{caption}]({rel})", "", f"*{caption}*", ""]
        return "\n".join(out)

    def html(self) -> str:
        esc = html.escape
        out = [
            "<!doctype html><html><head><meta charset='utf-8'>",
            f"<title>{esc(self.title)}</title>",
            "<style>body{font-family:sans-serif;max-width:960px;margin:2em auto;line-height:1.45}"
            "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;"
            "text-align:right}th{background:#f3f3f3}img{max-width:100%}pre{background:#f6f6f6;padding:8px}"
            "</style></head><body>",
            f"<h1>{esc(self.title)}</h1>",
        ]
        for kind, body in self.blocks:
            if kind == "heading":
                level, text = body
                out.append(f"<h{level}>{esc(text)}</h{level}>")
            elif kind == "text":
                if body.startswith("```"):
                    out.append(f"<pre>{esc(body.strip('`'))}</pre>")
                else:
                    out.append(f"<p>{esc(body)}</p>")
            elif kind == "table":
                columns, rows = body
                out.append("<table><tr>" + "".join(f"<th>{esc(c)}</th>" for c in columns) + "</tr>")
                out += ["<tr>" + "".join(f"<td>{esc(v)}</td>" for v in r) + "</tr>" for r in rows]
                out.append("</table>")
            elif kind == "figure":
                rel, caption = body
                out.append(f"<figure><img src='{esc(rel)}' alt='{esc(caption)}'>"
                           f"<figcaption>{esc(caption)}</figcaption></figure>")
        out.append("</body></html>")
        return "\n".join(out)

    def write(self) -> Path:
        """Write the three files (atomically, so a reader never sees half a report)."""
        _atomic_write(self.out_dir / "report.md", self.markdown())
        _atomic_write(self.out_dir / "report.html", self.html())
        _atomic_write(self.out_dir / "results.json", json.dumps(self.results, indent=2, ensure_ascii=False))
        return self.out_dir / "report.md"
