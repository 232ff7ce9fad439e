"""``python -m loraforge.llamacpp build|where``: the same command as ``loraforge-llamacpp`` (a module of its own, so
that running it does not import :mod:`.toolchain` twice, which Python warns about)."""

import sys

from .build import main

sys.exit(main())
