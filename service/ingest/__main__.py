"""`python -m service.ingest PATH [options]`, the same as `facebank ingest PATH [options]`."""

import sys

from service.ingest.cli import main

sys.exit(main())
