"""`python -m voip`: the same as `callpeer`."""

import sys

from voip.cli import main

sys.exit(main())
