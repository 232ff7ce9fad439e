"""``python -m loraforge.lmeval setup|where``: lm-evaluation-harness's environment."""

import sys

from . import main

sys.exit(main())
