"""A report as a list of blocks, written once as self-contained HTML and once as Markdown.

Blocks are headings, paragraphs, tables and figures. :func:`write_document` renders the same
blocks twice: ``report.html`` with every figure embedded as a base64 PNG (one file, readable
offline) and ``report.md`` with the figures as PNG files in ``figures/`` beside it; for a paper,
every table also as ``tables/<name>.csv`` and ``.tex`` and every figure also as PDF or SVG
(``formats``, see :mod:`segtune.report.export`).
"""

from __future__ import annotations

import base64
import html
import io
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence, Union

from matplotlib.figure import Figure as MplFigure

from segtune.report.export import DEFAULT_FORMATS, cell_text, check_formats, table_csv, table_latex


@dataclass(frozen=True)
class Heading:
    """A heading; level 1 is the page title."""

    text: str
    level: int = 2


@dataclass(frozen=True)
class Text:
    """A paragraph."""

    text: str  # plain text with Markdown's **bold** and `code` spans


@dataclass(frozen=True)
class Table:
    """A table; its cells are formatted by :func:`cell_text`."""

    header: list[str]
    rows: list[list[Any]]
    caption: str = ""
    bold: frozenset[tuple[int, int]] = frozenset()  # (row, column) cells to emphasise
    name: str = ""  # file stem of its CSV and LaTeX export; default: its section's heading


@dataclass(frozen=True)
class Figure:
    """A rendered figure: embedded in the HTML, a file of figures/ beside the Markdown."""

    name: str  # file stem, unique in the report
    png: bytes
    caption: str = ""
    source: MplFigure | None = field(default=None, compare=False, repr=False)  # for the vector formats


Block = Union[Heading, Text, Table, Figure]


def figure_block(fig: MplFigure, name: str, caption: str = "", *, dpi: int = 110) -> Figure:
    """Render a matplotlib figure to a PNG :class:`Figure` block.

    Args:
        fig: a figure made as ``matplotlib.figure.Figure`` (not through pyplot, so there is
            nothing to close).
        name: the block's file stem, unique in the report.
        caption: the text under the figure.
        dpi: the PNG's resolution.
    """
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return Figure(name, buf.getvalue(), caption, source=fig)


def section(heading: str, blocks: list[Block], *, level: int = 2) -> list[Block]:
    """``blocks`` under a heading, or nothing at all where there are no blocks.

    Example:
        >>> section("Predictions", [])
        []
    """
    return [Heading(heading, level)] + blocks if blocks else []


def _inline_html(text: str) -> str:
    """Markdown's **bold** and `code` spans as HTML."""
    parts = html.escape(text).split("**")
    text = "".join(f"<b>{p}</b>" if i % 2 else p for i, p in enumerate(parts))
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(text.split("`")))


def to_markdown(blocks: list[Block], *, figure_dir: str = "figures") -> str:
    """The blocks as Markdown; figures refer to ``<figure_dir>/<name>.png``.

    Raises:
        TypeError: a block that is not a Heading, Text, Table or Figure.
    """
    out: list[str] = []
    for b in blocks:
        if isinstance(b, Heading):
            out.append("#" * b.level + " " + b.text)
        elif isinstance(b, Text):
            out.append(b.text)
        elif isinstance(b, Table):
            cells = [[cell_text(c).replace("|", "\\|") for c in row] for row in b.rows]
            cells = [[f"**{c}**" if (i, j) in b.bold else c for j, c in enumerate(row)] for i, row in enumerate(cells)]
            lines = ["| " + " | ".join(b.header) + " |", "|" + "---|" * len(b.header)]
            lines += ["| " + " | ".join(row) + " |" for row in cells]
            out.append((f"*{b.caption}*\n\n" if b.caption else "") + "\n".join(lines))
        elif isinstance(b, Figure):
            out.append(f"![{b.name}]({figure_dir}/{b.name}.png)"
                       + (f"\n\n*{b.caption}*" if b.caption else ""))
        else:
            raise TypeError(f"not a report block: {b!r}")
    return "\n\n".join(out) + "\n"


_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; max-width: 1200px;
       margin: 2em auto; padding: 0 1em; color: #222; line-height: 1.45; }
h1 { border-bottom: 2px solid #444; padding-bottom: .2em; }
h2 { border-bottom: 1px solid #ccc; padding-bottom: .15em; margin-top: 1.8em; }
table { border-collapse: collapse; margin: .6em 0 1.2em; font-size: 0.88em; }
th, td { border: 1px solid #ccc; padding: .25em .6em; text-align: left; white-space: nowrap; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
th { background: #f0f0f0; }
td.long { white-space: normal; min-width: 30em; }
tr:nth-child(even) td { background: #fafafa; }
caption { caption-side: top; text-align: left; font-style: italic; padding-bottom: .3em; }
figure { margin: 1em 0 1.6em; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-style: italic; font-size: 0.9em; color: #555; }
.scroll { overflow-x: auto; }
"""


def _html_cell(value: Any, bold: bool) -> str:
    text = html.escape(cell_text(value))
    text = f"<b>{text}</b>" if bold else text
    if len(text) > 60:
        return f'<td class="long">{text}</td>'
    return f'<td class="num">{text}</td>' if isinstance(value, (int, float)) else f"<td>{text}</td>"


def to_html(blocks: list[Block], *, title: str) -> str:
    """The blocks as one self-contained HTML page (figures embedded as base64 PNG, no scripts).

    Raises:
        TypeError: a block that is not a Heading, Text, Table or Figure.
    """
    out = [f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
           f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"]
    for b in blocks:
        if isinstance(b, Heading):
            out.append(f"<h{b.level}>{html.escape(b.text)}</h{b.level}>")
        elif isinstance(b, Text):
            out.append(f"<p>{_inline_html(b.text)}</p>")
        elif isinstance(b, Table):
            head = "".join(f"<th>{html.escape(h)}</th>" for h in b.header)
            body = "".join("<tr>" + "".join(_html_cell(c, (i, j) in b.bold) for j, c in enumerate(row)) + "</tr>"
                           for i, row in enumerate(b.rows))
            caption = f"<caption>{html.escape(b.caption)}</caption>" if b.caption else ""
            out.append(f"<div class=\"scroll\"><table>{caption}<thead><tr>{head}</tr></thead>"
                       f"<tbody>{body}</tbody></table></div>")
        elif isinstance(b, Figure):
            data = base64.b64encode(b.png).decode("ascii")
            out.append(f"<figure><img alt=\"{html.escape(b.caption or b.name)}\" src=\"data:image/png;base64,{data}\">"
                       + (f"<figcaption>{html.escape(b.caption)}</figcaption>" if b.caption else "") + "</figure>")
        else:
            raise TypeError(f"not a report block: {b!r}")
    out.append("</body></html>\n")
    return "\n".join(out)


def _export(blocks: list[Block], out_dir: Path, formats: Sequence[str]) -> None:
    """Every figure as ``figures/<name>.<png|pdf|svg>`` and every table as ``tables/<name>.<csv|tex>``."""
    figure_dir, table_dir = out_dir / "figures", out_dir / "tables"
    figure_dir.mkdir(parents=True, exist_ok=True)
    used: dict[str, int] = {}
    heading = "table"
    for b in blocks:
        if isinstance(b, Heading):
            heading = "-".join(re.findall(r"[a-z0-9]+", b.text.lower())) or "table"
        elif isinstance(b, Figure):
            (figure_dir / f"{b.name}.png").write_bytes(b.png)
            for fmt in ("pdf", "svg"):
                if fmt in formats and b.source is not None:
                    b.source.savefig(figure_dir / f"{b.name}.{fmt}", format=fmt)
        elif isinstance(b, Table) and {"csv", "tex"} & set(formats):
            table_dir.mkdir(exist_ok=True)
            stem = b.name or heading  # an unnamed table is named after its section
            used[stem] = used.get(stem, 0) + 1
            stem += f"-{used[stem]}" if used[stem] > 1 else ""
            if "csv" in formats:
                (table_dir / f"{stem}.csv").write_text(table_csv(b.header, b.rows), encoding="utf-8")
            if "tex" in formats:
                (table_dir / f"{stem}.tex").write_text(table_latex(b.header, b.rows, caption=b.caption, bold=b.bold),
                                                      encoding="utf-8")


def write_document(blocks: list[Block], out_dir: str | Path, *, title: str,
                   formats: Sequence[str] = DEFAULT_FORMATS) -> Path:
    """Write ``report.html``, ``report.md``, ``figures/`` and ``tables/`` into ``out_dir``.

    Args:
        blocks: the report's content, in order.
        out_dir: the report folder (made if missing).
        title: the HTML page's title.
        formats: the export formats (:data:`segtune.report.export.FORMATS`); PNG figures are
            always written (the Markdown shows them).

    Returns:
        The path of ``report.html``.

    Raises:
        ConfigError: an unknown format.
    """
    formats = check_formats(formats)
    out_dir = Path(out_dir)
    _export(blocks, out_dir, formats)
    (out_dir / "report.md").write_text(to_markdown(blocks), encoding="utf-8")
    path = out_dir / "report.html"
    path.write_text(to_html(blocks, title=title), encoding="utf-8")
    return path


__all__ = ["Block", "Figure", "Heading", "Table", "Text", "cell_text", "figure_block", "section", "to_html", "to_markdown",
           "write_document"]
