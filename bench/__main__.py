"""`python -m bench` from the repository root."""

import sys

from bench.cli import main

sys.exit(main())
