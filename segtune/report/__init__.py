"""Study and run reports: the tables and figures of a paper, as HTML and Markdown.

:func:`write_report` reads a study directory (its ``study.db``), a shared storage
(``storage=URL, study_name=NAME``) or a single run directory and writes into ``out``
(default ``<dir>/report``)::

    report.html      one self-contained page, figures embedded (readable offline)
    report.md        the same in Markdown, with figures/*.png beside it
    figures/         every figure as PNG (and PDF, SVG with formats=("pdf", "svg"))
    tables/          every table as CSV and as a LaTeX booktabs tabular
    trials.csv       one row per trial: parameters, objective mean and 95% interval, state, time
    runs.csv         one row per run (trial x seed x cv fold): objective, epochs, test Dice, run directory

A study report answers its question: what was varied, the best configuration and how sure we
are of it (a paired comparison over the seeds says when the top configurations differ by less
than the noise), a leaderboard, pivot tables and marginal charts, importances, curves laid out
by two hyperparameters, and predictions (by setting, of the best trials, the best one's worst cases).

The modules: ``study`` (a study's page), ``run`` (one run's page), ``pivots`` (pivots, metrics per
cell, averages, grouped bars), ``cells`` (the metrics of a trial), ``test_loss`` (a common test
loss), ``predictions`` (panels from checkpoints), ``levels`` (the varied hyperparameters),
``figures`` (matplotlib figures), ``document`` (blocks to HTML and Markdown), ``export`` (CSV,
LaTeX, PDF/SVG), ``options`` (what a report shows), ``lr_find`` (the LR range test's report) and
``data`` (what a report reads).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from segtune.report.data import load_report_study
from segtune.report.levels import Levels, grid_axes, varied_levels
from segtune.report.lr_find import is_lr_find_dir, lr_find_report
from segtune.report.options import ReportOptions
from segtune.report.predictions import prediction_blocks
from segtune.report.run import curve_blocks, run_report
from segtune.report.study import study_report, write_trial_tables


def write_report(path: str | Path | None = None, *, storage: str | None = None, study_name: str | None = None,
                 out: str | Path | None = None, layout: Sequence[str] | None = None,
                 options: ReportOptions | None = None) -> Path:
    """The report of a study directory, a stored study, a single run directory or an lr-find folder.

    Args:
        path: a study directory (holding study.db), a run directory (holding config.yaml) or
            the folder of ``segtune lr-find`` (holding lr_find.json); with ``storage``,
            optionally the study directory holding the trials' runs.
        storage: an SQLAlchemy URL of a shared study storage instead of ``study.db``.
        study_name: the study in the storage (needed when it holds several).
        out: the report folder; default ``<path>/report`` (for an lr-find folder, the folder;
            for a storage with no path, the study directory of the stored runs, else
            ``./<study name>-report``).
        layout: the two hyperparameters laying out the curve grids (rows, columns).
        options: what a study's report shows and writes (:class:`ReportOptions`); a run's
            report takes its formats and number of images.

    Returns:
        The path of report.html.

    Raises:
        ConfigError: no study or run there, an unknown study, or an unknown layout name.

    Example:
        >>> write_report("runs/optim-x-sched")  # doctest: +SKIP
        PosixPath('runs/optim-x-sched/report/report.html')
    """
    path = Path(path) if path is not None else None
    options = options or ReportOptions(layout=layout)
    if storage is None and path is not None and not (path / "study.db").is_file():
        if (path / "config.yaml").is_file():
            return run_report(path, out or path / "report", n_images=options.n_images, formats=options.formats)
        if is_lr_find_dir(path):
            return lr_find_report(path, out, formats=options.formats)
    study = load_report_study(path, url=storage, study_name=study_name)
    return study_report(study, out, study_dir=path, layout=layout, options=options)


__all__ = ["Levels", "ReportOptions", "curve_blocks", "grid_axes", "lr_find_report", "prediction_blocks", "run_report",
           "study_report", "varied_levels", "write_report", "write_trial_tables"]
