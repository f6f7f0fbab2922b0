"""The self-contained HTML report of ``piti eval``: one file, inline CSS, images as base64 PNG data URIs.

It shows the metrics table (value, which direction is better, the alignment of the real images as a
reference, a note per metric), the notes (unavailable metrics, small-n bias), the data set and the
sampling settings, and a grid of condition | sample | ground truth for the first items. It needs no
network, no script and no other file, so it can be mailed or attached as it is.
"""

from __future__ import annotations

import base64
import html
import io
from typing import Any, Iterable

CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1100px;
       color: #1d232a; padding: 0 1em; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; } h2 { font-size: 1.15em; margin-top: 1.6em; }
.sub { color: #5b6570; margin-top: 0; }
table { border-collapse: collapse; margin: 0.6em 0; }
th, td { border-bottom: 1px solid #d9dee3; padding: 0.35em 0.8em; text-align: left; vertical-align: top; }
th { background: #f2f4f6; font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; font-family: ui-monospace, Menlo, monospace; }
.muted { color: #7a848e; }
.notes { background: #fff8e1; border-left: 4px solid #f0b400; padding: 0.5em 1em; }
.notes li { margin: 0.2em 0; }
.grid { display: flex; flex-wrap: wrap; gap: 0.8em 1.6em; }
.grid figure { margin: 0; }
.grid img { width: 128px; height: 128px; image-rendering: pixelated; border: 1px solid #d9dee3; margin-right: 3px; }
.grid figcaption { font-size: 0.8em; color: #5b6570; text-align: center; }
"""

ARROWS = {"lower": "↓ lower", "higher": "↑ higher", "": ""}


def png_data_uri(img) -> str:
    """A (3, H, W) tensor in [0, 1] (or an (H, W, 3) uint8 array) as a ``data:image/png;base64,`` URI."""
    import numpy as np
    from PIL import Image

    if hasattr(img, "detach"):
        img = (img.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(np.asarray(img, dtype=np.uint8)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.3e}"
    return str(value)


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _metrics_table(record: dict) -> str:
    info = record.get("metric_info", {})
    out = ["<table class='metrics'><tr><th>metric</th><th>value</th><th>better</th><th>real images</th>"
           "<th>note</th></tr>"]
    for name, value in record["metrics"].items():
        meta = info.get(name, {})
        real = meta.get("real")
        out.append(f"<tr><td>{_e(meta.get('label', name))}</td><td class='num'>{_e(fmt(value))}</td>"
                   f"<td>{_e(ARROWS.get(meta.get('better', ''), ''))}</td>"
                   f"<td class='num'>{_e(fmt(real)) if real is not None else ''}</td>"
                   f"<td class='muted'>{_e(meta.get('note', ''))}</td></tr>")
    out.append("</table>")
    return "\n".join(out)


def _kv_table(pairs: Iterable[tuple[str, Any]]) -> str:
    rows = "".join(f"<tr><th>{_e(k)}</th><td>{_e(fmt(v))}</td></tr>" for k, v in pairs)
    return f"<table class='kv'>{rows}</table>"


def _grid(rows: list, stems: list[str] | None = None) -> str:
    if not rows:
        return "<p class='muted'>no images</p>"
    out = ["<div class='grid'>"]
    for i, row in enumerate(rows):
        cells = "".join(f"<img alt='{name} {i}' title='{name}' src='{png_data_uri(img)}'>"
                        for name, img in zip(("condition", "sample", "ground truth"), row))
        caption = _e(stems[i]) if stems and i < len(stems) else str(i)
        out.append(f"<figure>{cells}<figcaption>{caption}</figcaption></figure>")
    out.append("</div>")
    return "\n".join(out)


def render_report(record: dict, rows: list, *, title: str | None = None) -> str:
    """The report's HTML for an evaluation ``record`` (metrics.json's content) and grid ``rows``."""
    from piti_core import __version__

    data = record.get("data", {})
    title = title or f"piti eval: {record.get('task', '?')} — {record.get('run', '')}"
    notes = record.get("notes") or []
    notes_html = ("<div class='notes'><ul>" + "".join(f"<li>{_e(n)}</li>" for n in notes) + "</ul></div>") if notes else ""
    sub = (f"{data.get('n', '?')} of {data.get('available', '?')} validation images of {data.get('root', '?')} "
           f"({data.get('format', '?')}{', toy world' if data.get('toy_world') else ''}) at "
           f"{data.get('resolution', '?')} px; {fmt(record.get('seconds'))} s of sampling and scoring")
    ref = record.get("reference", {})
    data_pairs = [("run", record.get("run")), ("task", record.get("task")),
                  ("models", ", ".join(record.get("models", []))), *[(f"data.{k}", v) for k, v in data.items()],
                  ("reference statistics", ref.get("cache") or "n/a"),
                  ("reference from cache", ref.get("cached"))]
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>{CSS}</style></head>
<body>
<h1>{_e(title)}</h1>
<p class="sub">{_e(sub)}</p>
<h2>Metrics</h2>
{_metrics_table(record)}
{notes_html}
<h2>Condition | sample | ground truth (first {len(rows)} images)</h2>
{_grid(rows, record.get("grid_stems"))}
<h2>Data</h2>
{_kv_table(data_pairs)}
<h2>Sampling settings</h2>
{_kv_table(record.get("settings", {}).items())}
<p class="muted">piti {_e(__version__)} · format {_e(record.get("format", ""))}</p>
</body></html>
"""
