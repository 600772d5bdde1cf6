"""``python -m byzance.cli``."""

import sys

from byzance.cli import main

sys.exit(main())
