"""`python -m qat_rewrite ...` runs the command line."""

import sys

from qat_rewrite.cli import main

sys.exit(main())
