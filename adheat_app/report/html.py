"""Self-contained HTML pages: layout, tables, embedded images, and a minimal Markdown renderer.

Every page is one file with its style sheet inline and every image embedded
as a ``data:`` URI, so a report can be mailed or opened offline. Long content
sits in collapsed ``<details>`` blocks (:func:`details`) whose summary line
links the TSV file the table comes from, so a page reads in a few screens
with every block closed. The only script is the interactive viewer's
(:mod:`adheat_app.report.viewer`), inlined with its data.
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from adheat_app import __version__
from adheat_app.plotting import data_uri

STYLE = """
body { font-family: system-ui, sans-serif; margin: 0 auto; max-width: 1200px; padding: 0 1.5em 3em; color: #222; }
h1 { margin: .4em 0 .1em; font-size: 1.6em; }
h2 { margin: .4em 0 .3em; font-size: 1.25em; }
nav { position: sticky; top: 0; background: #fff; border-bottom: 1px solid #ddd; padding: .3em 0; z-index: 1; }
nav a { margin-right: .9em; font-size: .85em; }
section { border-bottom: 1px solid #eee; padding: .2em 0 .6em; }
section > p { margin: .3em 0; }
details > summary { cursor: pointer; color: #245; margin: .2em 0; }
details[open] > summary { margin-bottom: .5em; }
#answers { padding-left: 1.2em; margin: .4em 0; }
#answers li { margin: .35em 0; line-height: 1.4; }
li.warning { list-style-position: inside; }
figure { margin: .5em 0; }
table { border-collapse: collapse; font-size: .85em; margin: .5em 0; }
th, td { border: 1px solid #ccc; padding: .2em .5em; text-align: right; }
th { background: #f3f3f3; }
td:first-child, th:first-child { text-align: left; }
img { max-width: 100%; display: block; margin: .5em 0; }
.missing { color: #a33; font-style: italic; }
.warning { background: #fde8e8; border: 2px solid #b00; color: #700; padding: .6em 1em; margin: .5em 0; }
.note { color: #555; font-size: .9em; }
code { background: #f4f4f4; padding: 0 .2em; }
.scroll { overflow-x: auto; }
"""

@dataclass(frozen=True)
class Section:
    """One report section: anchor id, heading and HTML body."""

    id: str
    title: str
    body: str


def esc(text: object) -> str:
    """HTML-escape any value."""
    return html.escape(str(text))


def not_computed(what: str) -> str:
    """Paragraph saying that an input of a section is absent."""
    return f'<p class="missing">Not computed: {esc(what)}</p>'


def note(text: str) -> str:
    """A short explanatory paragraph."""
    return f'<p class="note">{esc(text)}</p>'


def details(summary: str, body: str, tsv: str | None = None) -> str:
    """A collapsed block: ``summary`` (escaped) and a link to the ``tsv`` file it shows, then ``body`` (HTML).

    ``tsv`` is a path relative to the page (``group/overlap.tsv``).
    """
    link = f' (<a href="{esc(tsv)}">{esc(tsv)}</a>)' if tsv else ""
    return f"<details><summary>{esc(summary)}{link}</summary>\n{body}\n</details>"


def image(png: bytes, alt: str) -> str:
    """An embedded PNG image."""
    return f'<img src="{data_uri(png)}" alt="{esc(alt)}">'


def svg_image(svg: bytes, alt: str) -> str:
    """An embedded SVG image (as an ``<img>``: scripts inside the SVG never run)."""
    import base64

    return f'<img src="data:image/svg+xml;base64,{base64.b64encode(svg).decode("ascii")}" alt="{esc(alt)}">'


def table(frame: pd.DataFrame, digits: int = 3, max_rows: int = 200) -> str:
    """An HTML table of a data frame (escaped; ``n/a`` for missing values)."""
    shown = frame.head(max_rows)
    text = shown.to_html(index=False, escape=True, na_rep="n/a", float_format=lambda v: f"{v:.{digits}g}",
                         border=0)
    text = f'<div class="scroll">{text}</div>'
    if len(frame) > max_rows:
        text += note(f"first {max_rows} of {len(frame)} rows; the full table is in the TSV file")
    return text


def markdown(text: str) -> str:
    """Render the simple Markdown of ``logs/CITATION.md`` (headings, paragraphs, lists, code) to HTML."""
    blocks = []
    for block in re.split(r"\n\s*\n", text.strip()):
        lines = [line for line in block.splitlines() if not line.strip().startswith("<!--")]
        if not lines:
            continue
        heading = re.match(r"^(#{1,4})\s+(.*)$", lines[0])
        if heading and len(lines) == 1:
            level = len(heading.group(1)) + 2
            blocks.append(f"<h{level}>{_inline(heading.group(2))}</h{level}>")
        elif all(line.lstrip().startswith(("- ", "* ")) for line in lines):
            items = "".join(f"<li>{_inline(line.lstrip()[2:])}</li>" for line in lines)
            blocks.append(f"<ul>{items}</ul>")
        else:
            if heading:
                level = len(heading.group(1)) + 2
                blocks.append(f"<h{level}>{_inline(heading.group(2))}</h{level}>")
                lines = lines[1:]
            blocks.append(f"<p>{_inline(' '.join(lines))}</p>")
    return "\n".join(blocks)


def _inline(text: str) -> str:
    text = esc(text)
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", text)


def page(title: str, sections: Sequence[Section]) -> str:
    """A complete, self-contained HTML document."""
    nav = " ".join(f'<a href="#{esc(s.id)}">{esc(s.title)}</a>' for s in sections)
    body = "\n".join(f'<section id="{esc(s.id)}">\n<h2>{esc(s.title)}</h2>\n{s.body}\n</section>' for s in sections)
    return (f"<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{esc(title)}</title>\n"
            f"<style>{STYLE}</style>\n</head>\n<body>\n<h1>{esc(title)}</h1>\n"
            f"<p class=\"note\">adheat {esc(__version__)}</p>\n<nav>{nav}</nav>\n{body}\n</body>\n</html>\n")
