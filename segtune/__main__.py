import sys

from segtune.cli import main

sys.exit(main())
