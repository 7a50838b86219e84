import sys

from iwarp.cli import main

sys.exit(main())
