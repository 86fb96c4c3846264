"""`python -m guardserve`: the same as the `guardserve` command."""

import sys

from guardserve.cli import main

sys.exit(main())
