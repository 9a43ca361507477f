"""``python -m a3s_gateway`` ≡ ``a3s-gateway``."""

import sys

from .cli import main

sys.exit(main())
