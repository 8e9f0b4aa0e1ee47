"""`python -m btcstream` runs the command line."""

import sys

from btcstream.cli import main

sys.exit(main())
