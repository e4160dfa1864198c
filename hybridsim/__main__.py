"""``python -m hybridsim`` = the ``hybridsim`` console script."""

import sys

from hybridsim.cli import main

sys.exit(main())
