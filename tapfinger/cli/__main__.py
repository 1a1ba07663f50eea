"""`python -m tapfinger.cli ...` runs the `tapfinger` command."""

import sys

from tapfinger.cli.main import main

sys.exit(main())
