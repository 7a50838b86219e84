"""`python -m iwarp.data SUBCOMMAND ...`: the `iwarp data` commands without the other areas' CLIs
(what dvc.yaml runs, so a stage needs only this package)."""

import sys

from .cli import main

sys.exit(main())
