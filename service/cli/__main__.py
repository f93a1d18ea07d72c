"""`python -m service.cli` runs the `aim` command (used to start `--workers` children)."""

import sys

from .main import main

sys.exit(main())
