"""``python -m fastalign`` is the ``fastalign`` command."""

import sys

from fastalign.cli import main

sys.exit(main())
