"""`python -m llmzoo`: the `llmzoo` command line."""

import sys

from .cli import main

sys.exit(main())
