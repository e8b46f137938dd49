"""`python -m scripts.benchmark` (what scripts/bench runs, from the repository's root)."""

from __future__ import annotations

import sys

from .cli import main
from .runner import say

try:
    sys.exit(main())
except KeyboardInterrupt as interrupt:
    say(f"interrupted ({interrupt}); cleaned up")
    sys.exit(130)
