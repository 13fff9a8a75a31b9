"""The ``segtune`` command line (:func:`main`); one module per command group, :mod:`segtune.cli.main` assembles them."""

from segtune.cli.main import main
from segtune.study.demo import demo_config_path

__all__ = ["demo_config_path", "main"]
