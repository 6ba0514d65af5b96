"""`python -m rendezvous`: the same as `callpeer-rendezvous`."""

import sys

from rendezvous.cli import main

sys.exit(main())
