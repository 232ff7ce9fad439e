"""``python -m loraforge.vllm setup|where``: vLLM's environment."""

import sys

from .environment import main

sys.exit(main())
