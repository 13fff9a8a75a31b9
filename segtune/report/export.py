"""A report's tables and figures in the formats of a paper: CSV, LaTeX (booktabs) and PDF/SVG.

:func:`segtune.report.document.write_document` writes every table as ``tables/<name>.csv``
(full-precision numbers, for a spreadsheet) and ``tables/<name>.tex`` (a ``tabular`` with
``\\toprule``/``\\midrule``/``\\bottomrule``, for ``\\input`` in a paper that loads booktabs), and
every figure as ``figures/<name>.png`` and, if asked, ``.pdf`` and ``.svg`` (vector).
"""

from __future__ import annotations

import csv
import io
from typing import Any, Sequence

from segtune.errors import ConfigError
from segtune.registry import suggest

FORMATS = ("png", "pdf", "svg", "csv", "tex")  # figures: png (always), pdf, svg; tables: csv, tex
DEFAULT_FORMATS = ("png", "csv", "tex")
_LATEX_SPECIAL = {"&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
                  "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "\\": r"\textbackslash{}",
                  "±": r"$\pm$", "–": "--", "×": r"$\times$", "∈": r"$\in$"}


def check_formats(formats: Sequence[str]) -> tuple[str, ...]:
    """The export formats, checked; PNG is always among them (the HTML and Markdown show it).

    Raises:
        ConfigError: a format not in :data:`FORMATS`, with the closest one.

    Example:
        >>> check_formats(["pdf", "tex"])
        ('png', 'pdf', 'tex')
    """
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ConfigError(f"report --format: unknown format {unknown[0]!r}{suggest(unknown[0], list(FORMATS))}; "
                          f"choose from {', '.join(FORMATS)}")
    return tuple(dict.fromkeys(["png", *formats]))


def cell_text(value: Any) -> str:
    """A table cell: floats with 4 decimals (4 significant digits below 0.001), None as a dash.

    Example:
        >>> cell_text(0.81234), cell_text(0.0000123), cell_text(None)
        ('0.8123', '1.23e-05', '–')
    """
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e-3 and value != 0 else f"{value:.4f}"
    return str(value)


def table_csv(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """The table as CSV: numbers at full precision, a missing value as an empty cell."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([["" if c is None else c for c in row] for row in rows])
    return buf.getvalue()


def latex_escape(text: str) -> str:
    """``text`` with LaTeX's special characters escaped (and ±, –, × as math).

    Example:
        >>> latex_escape("val_dice 0.81 ± 0.01")
        'val\\\\_dice 0.81 $\\\\pm$ 0.01'
    """
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text)


def table_latex(header: Sequence[str], rows: Sequence[Sequence[Any]], *, caption: str = "",
                bold: frozenset[tuple[int, int]] = frozenset()) -> str:
    """The table as a booktabs ``tabular`` (numbers right-aligned, text left), the caption as a comment.

    Args:
        header: the column titles.
        rows: the cells, formatted as :func:`cell_text` formats them.
        caption: written as a ``%`` comment above the tabular (the paper sets its own caption).
        bold: (row, column) cells set in ``\\textbf``.

    Example:
        >>> print(table_latex(["a", "b"], [["x", 0.5]]))  # doctest: +NORMALIZE_WHITESPACE
        \\begin{tabular}{lr}
        \\toprule
        a & b \\\\
        \\midrule
        x & 0.5000 \\\\
        \\bottomrule
        \\end{tabular}
    """
    numeric = [bool(rows) and all(isinstance(row[j], (int, float)) or row[j] is None for row in rows)
               for j in range(len(header))]
    lines = [f"% {latex_escape(caption)}"] if caption else []
    lines += ["\\begin{tabular}{" + "".join("r" if n else "l" for n in numeric) + "}", "\\toprule",
              " & ".join(latex_escape(h) for h in header) + " \\\\", "\\midrule"]
    for i, row in enumerate(rows):
        cells = [latex_escape(cell_text(c)) for c in row]
        cells = [f"\\textbf{{{c}}}" if (i, j) in bold else c for j, c in enumerate(cells)]
        lines.append(" & ".join(cells) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(lines) + "\n"


__all__ = ["DEFAULT_FORMATS", "FORMATS", "cell_text", "check_formats", "latex_escape", "table_csv", "table_latex"]
