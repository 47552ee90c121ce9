"""``python -m worker.engine audit ...``: the engine's CLI with torch alone installed."""

import sys

from .cli import main

sys.exit(main())
