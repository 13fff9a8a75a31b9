"""``python -m segtune``: the ``segtune`` command line."""

import sys

from segtune.cli.main import main

sys.exit(main())
