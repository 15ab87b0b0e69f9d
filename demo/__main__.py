"""`python -m demo`: the tour of `remediator demo` (docs/demo.md)."""

import sys

from demo.tour import main

sys.exit(main())
