"""`python -m agent` runs the moonwatch command line."""

import sys

from agent.cli import main

sys.exit(main())
