"""``python -m scoresde`` runs the command-line interface."""

import sys

from scoresde.cli import main

sys.exit(main())
