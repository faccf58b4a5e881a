"""`python -m digitd` is the same as the `digitd` command."""

import sys

from digitd.cli import main

sys.exit(main())
