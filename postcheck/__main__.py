"""`python -m postcheck` runs the same command line as the `postcheck` console script."""

import sys

from postcheck.cli import main

sys.exit(main())
