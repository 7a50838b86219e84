"""`python -m deploy kserve ...`: the `iwarp deploy` commands without the umbrella CLI (what the
pipeline's canary step runs, so `components/` never calls the application above it)."""

import sys

from iwarp.cli import main

sys.exit(main(["deploy", *sys.argv[1:]], ("deploy.cli",)))
