"""The HTML kit the pages are built from: a page with a table of contents, titled sections,
tables, escaping, and PNGs and videos embedded as data URIs.

A page needs no network: images and the video are base64 data URIs and the style sheet is inline,
so it can be mailed, attached to an issue or opened offline.
"""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Section:
    """One titled part of a page; `anchor` is its id for the page's table of contents."""

    anchor: str
    title: str
    body: str


STYLE = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0; color: #1d2330;
       background: #f4f5f8; }
main { max-width: 1180px; margin: 0 auto; padding: 20px 28px 60px; }
header h1 { margin: 8px 0 2px; font-size: 26px; }
header p { margin: 2px 0; color: #555d70; }
nav { margin: 12px 0 8px; font-size: 13px; }
nav a { margin-right: 14px; color: #2d5fa8; text-decoration: none; }
section { background: #fff; border-radius: 8px; padding: 14px 20px 18px; margin: 16px 0;
          box-shadow: 0 1px 3px rgba(0,0,0,.08); }
h2 { font-size: 19px; margin: 4px 0 10px; }
h3 { font-size: 15px; margin: 0 0 4px; }
img, video { max-width: 100%; height: auto; display: block; }
figure { margin: 8px 0 14px; }
figcaption { font-size: 13px; color: #555d70; margin-top: 4px; }
table { border-collapse: collapse; font-size: 13.5px; margin: 6px 0; }
th, td { text-align: left; padding: 3px 12px 3px 0; border-bottom: 1px solid #e4e6ec; vertical-align: top; }
th { color: #555d70; font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
code { background: #eef0f5; padding: 1px 5px; border-radius: 3px; }
.headline { font-size: 16px; color: #1d2330; }
.finding { border-left: 5px solid #c6cad4; padding: 6px 12px; margin: 8px 0; background: #fafbfc; }
.finding.fired { border-color: #d1343a; background: #fff1f1; }
.badge { font-size: 12px; font-weight: 700; padding: 1px 7px; border-radius: 9px; margin-left: 6px;
         background: #e4e6ec; color: #555d70; }
.fired .badge, .badge.fired { background: #d1343a; color: #fff; }
.badge.ok { background: #dcefe0; color: #24663a; }
.advice { margin: 4px 0 0; }
.note { color: #555d70; font-size: 13.5px; }
.warn { color: #b3261e; font-weight: 600; }
.pair { display: grid; grid-template-columns: 1fr 1fr; gap: 18px; }
.callouts li { margin: 4px 0; }
details summary { cursor: pointer; color: #555d70; font-size: 13px; }
"""


def esc(value) -> str:
    return html.escape(str(value), quote=True)


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def image(path, caption: str = "", alt: str = "") -> str:
    """A PNG file embedded as a figure, or a note saying it is missing."""
    path = Path(path)
    if not path.is_file():
        return f'<p class="note">{esc(path.name)} is missing from this inspection.</p>'
    return png_figure(path.read_bytes(), caption, alt or path.stem)


def png_figure(png: bytes, caption: str = "", alt: str = "") -> str:
    caption_html = f"<figcaption>{caption}</figcaption>" if caption else ""
    return f'<figure><img alt="{esc(alt)}" src="{data_uri(png, "image/png")}">{caption_html}</figure>'


def matplotlib_png(fig) -> bytes:
    """A matplotlib figure as PNG bytes (the figure is closed)."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def video(path, caption: str = "") -> str:
    """An MP4 file embedded in a <video> element with controls."""
    path = Path(path)
    if not path.is_file():
        return f'<p class="note">{esc(path.name)} is missing from this inspection.</p>'
    caption_html = f"<figcaption>{caption}</figcaption>" if caption else ""
    return (f'<figure><video controls loop preload="auto" width="800" height="450" '
            f'src="{data_uri(path.read_bytes(), "video/mp4")}"></video>{caption_html}</figure>')


def table(rows, header=None, numeric_columns=()) -> str:
    """Rows of cells (already HTML) as a table; `numeric_columns` are right-aligned."""
    parts = ["<table>"]
    if header:
        parts.append("<tr>" + "".join(f"<th>{h}</th>" for h in header) + "</tr>")
    for row in rows:
        cells = "".join(f'<td class="num">{c}</td>' if i in numeric_columns else f"<td>{c}</td>"
                        for i, c in enumerate(row))
        parts.append(f"<tr>{cells}</tr>")
    parts.append("</table>")
    return "".join(parts)


def page(title: str, subtitle_lines: list[str], sections: list[Section]) -> str:
    """A whole HTML document: header, a table of contents, the sections."""
    nav = "".join(f'<a href="#{s.anchor}">{esc(s.title)}</a>' for s in sections)
    subtitle = "".join(f"<p>{line}</p>" for line in subtitle_lines)
    body = "".join(f'<section id="{s.anchor}"><h2>{esc(s.title)}</h2>{s.body}</section>' for s in sections)
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(title)}</title><style>{STYLE}</style></head>"
            f"<body><main><header><h1>{esc(title)}</h1>{subtitle}</header><nav>{nav}</nav>{body}</main>"
            "</body></html>\n")
