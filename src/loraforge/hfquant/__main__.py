"""``python -m loraforge.hfquant setup|where``: llm-compressor's environment."""

import sys

from .environment import main

sys.exit(main())
