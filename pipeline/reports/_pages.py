"""Self-contained HTML pages (run reports, audit galleries): figures and thumbnails embedded as
data URIs, so a page is one file that can be mailed or moved; sortable tables by a few lines of
inline script; nothing fetched from the network."""
from __future__ import annotations

import base64
import html
import io
from pathlib import Path

from pipeline.data import decode_rgb

THUMBNAIL = 180  # longest side of a gallery thumbnail, pixels

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1200px;padding:0 16px;color:#222}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #ddd;padding-bottom:4px}
table{border-collapse:collapse;font-size:13px;margin:8px 0}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:right}th{background:#f4f4f4}
td:first-child,th:first-child{text-align:left}
table.sortable th{cursor:pointer;user-select:none}table.sortable th:after{content:" \\2195";color:#aaa}
.figure{max-width:100%;height:auto;border:1px solid #eee}
.gallery{display:flex;flex-wrap:wrap;gap:10px}
.shot{margin:0;width:190px;font-size:12px;border:1px solid #ddd;padding:4px;background:#fafafa}
.shot img{display:block;max-width:180px;max-height:180px;margin:auto}
.shot .missing{height:120px;display:flex;align-items:center;justify-content:center;color:#999;background:#eee}
.pair{display:flex;gap:4px}.pair .shot{width:190px}
.path{color:#777;word-break:break-all}.bad{color:#b00}.good{color:#070}
dl.facts{display:grid;grid-template-columns:max-content auto;gap:2px 16px;font-size:14px}dt{font-weight:600}
"""

SORT_SCRIPT = """
document.querySelectorAll('table.sortable').forEach(function(t){
  t.querySelectorAll('th').forEach(function(th,i){
    th.addEventListener('click',function(){
      var body=t.tBodies[0],rows=Array.from(body.rows),asc=th.dataset.dir!=='asc';
      t.querySelectorAll('th').forEach(function(h){delete h.dataset.dir});th.dataset.dir=asc?'asc':'desc';
      rows.sort(function(a,b){
        var x=a.cells[i].dataset.v||a.cells[i].textContent,y=b.cells[i].dataset.v||b.cells[i].textContent,
            nx=parseFloat(x),ny=parseFloat(y),c=(!isNaN(nx)&&!isNaN(ny))?nx-ny:x.localeCompare(y);
        return asc?c:-c});
      rows.forEach(function(r){body.appendChild(r)})})})});
"""


def esc(value) -> str:
    return html.escape(str(value), quote=True)


def page(title: str, sections: list[str]) -> str:
    """A whole HTML5 document: ``title`` and the given sections (HTML fragments) in order."""
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n<title>{esc(title)}</title>\n"
            f"<style>{STYLE}</style>\n</head>\n<body>\n<h1>{esc(title)}</h1>\n" + "\n".join(sections)
            + f"\n<script>{SORT_SCRIPT}</script>\n</body>\n</html>\n")


def section(heading: str, body: str, id: str = "") -> str:
    opening = f'<section id="{esc(id)}">' if id else "<section>"
    return f"{opening}\n<h2>{esc(heading)}</h2>\n{body}\n</section>"


def facts(items) -> str:
    """A definition list of (name, value) pairs, values escaped."""
    return "<dl class=\"facts\">" + "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in items) + "</dl>"


def table(headers, rows, sortable: bool = True) -> str:
    """An HTML table; a cell is a value or (shown text, sort value). Click a header of a sortable
    table to sort by that column (numbers as numbers)."""
    def cell(v):
        if isinstance(v, tuple):
            return f"<td data-v=\"{esc(v[1])}\">{esc(v[0])}</td>"
        return f"<td>{esc(v)}</td>"
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "\n".join("<tr>" + "".join(cell(v) for v in row) + "</tr>" for row in rows)
    opening = '<table class="sortable">' if sortable else "<table>"
    return f"{opening}<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody></table>"


def embedded_figure(png: Path, alt: str) -> str:
    """An <img> holding the PNG file itself; empty when the file is absent."""
    png = Path(png)
    if not png.is_file():
        return ""
    data = base64.b64encode(png.read_bytes()).decode("ascii")
    return f"<p><img class=\"figure\" src=\"data:image/png;base64,{data}\" alt=\"{esc(alt)}\"></p>"


def thumbnail(path: Path, size: int = THUMBNAIL) -> str | None:
    """A JPEG thumbnail of an image file as a data URI; None if the file is gone or unreadable."""

    try:
        im = decode_rgb(path, size)  # as the images are read for codes: any format, transparency on white
        im.thumbnail((size, size))
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=80)
    except Exception:  # a missing, moved or broken image file gets a placeholder, not a failed report
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def shot(image: Path | None, caption_html: str, alt: str) -> str:
    """One gallery tile: the thumbnail (or a placeholder) and a caption (HTML, already escaped)."""
    uri = thumbnail(image) if image is not None else None
    pic = (f"<img src=\"{uri}\" alt=\"{esc(alt)}\">" if uri else
           "<div class=\"missing\">image not readable</div>")
    return f"<figure class=\"shot\">{pic}<figcaption>{caption_html}</figcaption></figure>"
