"""``python -m tuning.cli``: the ``q3r-tune`` command."""
import sys

from tuning.cli import main

sys.exit(main())
