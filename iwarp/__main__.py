from iwarp.cli import main
import sys

sys.exit(main())
