"""`python -m opencodegen`: the same as the `opencodegen` command."""

import sys

from opencodegen.cli import main

sys.exit(main())
