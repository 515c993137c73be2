"""`python -m dmrnet`: the same command line as the `dmrnet` script."""

import sys

from dmrnet.cli import main

sys.exit(main())
