"""``python -m sdcpp_py.server``: the same as ``sdcpp serve``."""

import sys

from ._cli import main

sys.exit(main())
