"""A report's export for papers (CSV, LaTeX, PDF/SVG) and the options of `segtune report`."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from segtune.cli import main
from segtune.report.export import table_latex


def _check_balanced_tabular(tex: str) -> None:
    """A booktabs tabular: begin/end paired, braces balanced, every row with as many cells as the column spec."""
    body = "\n".join(line for line in tex.splitlines() if not line.startswith("%"))
    assert body.count("\\begin{tabular}") == body.count("\\end{tabular}") == 1
    unescaped = re.sub(r"\\[{}]", "", body)
    assert unescaped.count("{") == unescaped.count("}")
    spec = re.search(r"\\begin\{tabular\}\{([lrc]+)\}", body).group(1)
    rows = [line for line in body.splitlines() if line.endswith("\\\\")]
    assert rows and all(len(re.split(r"(?<!\\)&", row)) == len(spec) for row in rows)
    assert body.index("\\toprule") < body.index("\\midrule") < body.index("\\bottomrule")


def test_every_table_is_a_csv_and_a_latex_tabular_that_compiles(study_report, tmp_path):
    tables = sorted((study_report / "tables").glob("*.tex"))
    # the leaderboard, the test table, the pivot, its metrics, the averages of each setting, importances...
    assert {"leaderboard", "test", "pivot-optimizer.name-scheduler.name", "averages-optimizer.name"} <= {
        p.stem for p in tables}
    assert {p.stem for p in tables} == {p.stem for p in (study_report / "tables").glob("*.csv")}
    for path in tables:
        _check_balanced_tabular(path.read_text())
    pdflatex = shutil.which("pdflatex")
    if pdflatex is None:
        pytest.skip("no pdflatex here: the tables were checked as balanced booktabs tabulars only")
    inputs = "\n".join(f"\\input{{{p}}}\n\n" for p in tables)
    (tmp_path / "all.tex").write_text("\\documentclass{article}\\usepackage{booktabs}\\usepackage[utf8]{inputenc}"
                                      f"\\begin{{document}}\n{inputs}\\end{{document}}\n")
    done = subprocess.run([pdflatex, "-interaction=nonstopmode", "-halt-on-error", "all.tex"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-2000:]


def test_latex_escapes_and_bolds_cells():
    tex = table_latex(["optimizer.name \\ loss", "val_dice"], [["a_b & c", 0.5], ["50%", None]],
                      caption="mean ± 95%", bold=frozenset({(0, 1)}))
    assert tex.splitlines()[0] == "% mean $\\pm$ 95\\%"
    assert "a\\_b \\& c & \\textbf{0.5000} \\\\" in tex and "50\\% & -- \\\\" in tex
    _check_balanced_tabular(tex)


@pytest.mark.slow
def test_cli_report_with_vector_figures_a_common_test_loss_and_chosen_images(study_report, tmp_path):
    out = tmp_path / "r"
    assert main(["report", str(study_report.parent), "--out", str(out), "--format", "pdf", "svg", "csv",
                 "--test-loss", "dice", "--images", "1", "6", "--metrics", "val_dice", "test_common_loss",
                 "--layout", "optimizer.name", "x", "scheduler.name"]) == 0
    for stem in ("marginals", "grouped", "predictions", "worst"):
        assert (out / "figures" / f"{stem}.pdf").read_bytes()[:5] == b"%PDF-"
        assert b"<svg" in (out / "figures" / f"{stem}.svg").read_bytes()[:400]
    assert not list((out / "tables").glob("*.tex"))  # csv asked, tex not
    md = (out / "report.md").read_text()
    # the common loss is the Dice loss of every trial's own best.pt on the test split: a number in 0..1
    row = re.search(r"\| 0 \| adam \| none \| ([0-9.]+) \| ([0-9.]+) \|", md)
    assert row and 0.0 <= float(row.group(2)) <= 1.0 and "test loss (common)" in md
    assert "| optimizer.name | scheduler.name | trial | state | seeds | val Dice | test loss (common) |" in md
    assert md.count("Validation images [1, 6]") == 2  # the grid by setting and the best trials


@pytest.mark.parametrize("args, message", [
    (["--format", "pfd"], r"report --format: unknown format 'pfd' \(did you mean 'pdf'\?\); choose from png, pdf"),
    (["--metrics", "val_dise"], r"unknown metric 'val_dise' \(did you mean 'val_dice'\?\)"),
    (["--test-loss", "dcie"], r"report --test-loss: unknown loss 'dcie' \(did you mean 'dice'\?\)"),
    # slow: the report is written up to its predictions before the image index is checked
    pytest.param(["--images", "99"], r"report --images: image 99 does not exist; the validation split holds 8 images",
                 marks=pytest.mark.slow),
])
def test_cli_report_options_name_the_fix(study_report, tmp_path, capsys, args, message):
    assert main(["report", str(study_report.parent), "--out", str(tmp_path), *args]) == 2
    assert re.search(message, capsys.readouterr().err)
