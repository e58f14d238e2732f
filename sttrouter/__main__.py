"""``python -m sttrouter``."""

import sys

from sttrouter.cli import main

sys.exit(main())
