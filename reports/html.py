"""The report page: one self-contained HTML file, charts drawn by an inlined plotly.js.

plotly.js (the copy shipped inside the `plotly` Python package, so the versions always match) is
gzip-compressed and base64-inlined, then unpacked in the browser with `DecompressionStream`: the
page needs no network and weighs ~2 MB instead of ~5 MB.  Each figure travels as JSON inside a
`<script type="application/json">` element with `<`, `>` and `&` escaped, so no user-supplied
name can close the script or inject markup; every text put into HTML goes through `esc`.
When all charts are drawn the page sets `document.body.dataset.chartsRendered` (tests read it).
"""

from __future__ import annotations

import base64
import functools
import gzip
import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import plotly.graph_objects as go

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf")


def esc(v: Any) -> str:
    """HTML-escape any value's text."""
    return html.escape(str(v), quote=True)


@dataclass
class Chart:
    """A figure and the one sentence that says what to read from it."""

    fig: go.Figure
    reading: str


@dataclass
class Section:
    """A titled part of the report: prose (already-escaped HTML), charts, tables."""

    title: str
    intro_html: str = ""
    charts: list[Chart] = field(default_factory=list)
    tables_html: list[str] = field(default_factory=list)


def style(fig: go.Figure, title: str, x_title: str, y_title: str, height: int = 380) -> go.Figure:
    """Common layout: the title, labelled axes (with units), a light grid, a compact legend."""
    fig.update_layout(
        title={"text": esc(title), "x": 0.01, "xanchor": "left", "font": {"size": 15}},
        xaxis={"title": {"text": esc(x_title)}, "gridcolor": "#e6e6e6", "zeroline": False, "automargin": True},
        yaxis={"title": {"text": esc(y_title)}, "gridcolor": "#e6e6e6", "zeroline": False, "automargin": True},
        height=height, margin={"l": 60, "r": 20, "t": 50, "b": 50}, plot_bgcolor="white", paper_bgcolor="white",
        font={"family": "system-ui, -apple-system, Segoe UI, sans-serif", "size": 12, "color": "#222"},
        legend={"font": {"size": 11}}, colorway=list(PALETTE), hovermode="closest")
    return fig


def fmt(v: Any, digits: int = 3) -> str:
    """A table cell: numbers with thousands separators and sensible precision, NaN as a dash."""
    if v is None or (isinstance(v, float) and v != v):
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if v == int(v) and abs(v) < 1e9:
            return f"{int(v):,}"
        return f"{v:,.{digits}g}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(v)


def table_html(df: pd.DataFrame, headers: dict[str, str] | None = None, caption: str = "",
               highlight_first: bool = False) -> str:
    """An escaped HTML table of `df` (column renames in `headers`)."""
    headers = headers or {}
    cols = list(df.columns)
    head = "".join(f"<th>{esc(headers.get(c, c))}</th>" for c in cols)
    body = []
    for i, (_, row) in enumerate(df.iterrows()):
        cls = ' class="best"' if highlight_first and i == 0 else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{esc(fmt(row[c]))}</td>" for c in cols) + "</tr>")
    cap = f"<caption>{esc(caption)}</caption>" if caption else ""
    return f'<div class="tablewrap"><table>{cap}<thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'


def _figure_json(fig: go.Figure) -> str:
    text = fig.to_json(validate=False, remove_uids=True)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


@functools.lru_cache(maxsize=1)
def plotly_js_gz_b64() -> str:
    from plotly.offline import get_plotlyjs

    return base64.b64encode(gzip.compress(get_plotlyjs().encode(), compresslevel=9, mtime=0)).decode()


CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:0;color:#222;background:#fafafa}
header{background:#1f3a5f;color:#fff;padding:18px 28px}header h1{margin:0;font-size:22px}
header p{margin:4px 0 0;opacity:.85;font-size:13px}main{max-width:1100px;margin:0 auto;padding:8px 24px 40px}
nav{font-size:13px;margin:12px 0}nav a{margin-right:14px;color:#1f3a5f}
section{background:#fff;border:1px solid #e3e3e3;border-radius:8px;padding:14px 20px;margin:16px 0}
h2{font-size:18px;margin:4px 0 10px}.reading{margin:2px 0 18px;font-size:14px;color:#333}
.lead{font-size:16px;line-height:1.45}.warn{color:#8a4b00;background:#fff4e0;padding:6px 10px;border-radius:4px}
.chart{min-height:380px}.tablewrap{overflow-x:auto;margin:8px 0}
table{border-collapse:collapse;font-size:12.5px}caption{text-align:left;font-weight:600;padding:4px 0}
th,td{border-bottom:1px solid #e6e6e6;padding:4px 8px;text-align:right;white-space:nowrap}
th{background:#f2f4f7}tr.best td{background:#eaf6ea;font-weight:600}
#jsmsg{color:#a00}footer{font-size:12px;color:#777;text-align:center;margin:20px}
"""

LOADER = """
(async function () {
  const msg = document.getElementById('jsmsg');
  try {
    if (typeof DecompressionStream === 'undefined') {
      msg.textContent = 'This browser cannot unpack the charts (needs Chrome 80+, Firefox 113+ or Safari 16.4+); the tables above are complete.';
      return;
    }
    const b64 = document.getElementById('plotly-gz').textContent.trim();
    const bin = atob(b64);
    const bytes = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
    const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream('gzip'));
    const code = await new Response(stream).text();
    const s = document.createElement('script');
    s.textContent = code;
    document.head.appendChild(s);
    let n = 0;
    for (const el of document.querySelectorAll('script.figure')) {
      const spec = JSON.parse(el.textContent);
      await Plotly.newPlot(document.getElementById(el.dataset.target), spec.data, spec.layout,
                           {displaylogo: false, responsive: true});
      n += 1;
    }
    document.body.dataset.chartsRendered = String(n);
  } catch (e) {
    msg.textContent = 'Charts could not be drawn: ' + e;
    throw e;
  }
})();
"""


def render_page(title: str, subtitle: str, sections: Sequence[Section], footer: str) -> str:
    """The whole document."""
    nav, parts, figures = [], [], []
    n = 0
    for k, sec in enumerate(sections):
        anchor = f"s{k}"
        nav.append(f'<a href="#{anchor}">{esc(sec.title)}</a>')
        body = [f'<section id="{anchor}"><h2>{esc(sec.title)}</h2>', sec.intro_html]
        for chart in sec.charts:
            body.append(f'<div class="chart" id="fig{n}"></div><p class="reading">{esc(chart.reading)}</p>')
            figures.append(f'<script type="application/json" class="figure" data-target="fig{n}">'
                           f'{_figure_json(chart.fig)}</script>')
            n += 1
        body.extend(sec.tables_html)
        body.append("</section>")
        parts.append("".join(body))
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head>"
        f'<body data-charts-expected="{n}"><header><h1>{esc(title)}</h1><p>{esc(subtitle)}</p></header><main>'
        f'<nav>{"".join(nav)}</nav><p id="jsmsg"></p>{"".join(parts)}</main>'
        f"<footer>{esc(footer)}</footer>"
        f'{"".join(figures)}<script id="plotly-gz" type="application/octet-stream">{plotly_js_gz_b64()}</script>'
        f"<script>{LOADER}</script></body></html>\n")
