"""``python -m dvr_plugin.cli``: the ``dvr`` command."""

import sys

from .main import main

if __name__ == "__main__":
    sys.exit(main())
