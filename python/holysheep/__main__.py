"""``python -m holysheep``: the same as the ``holysheep`` command."""

import sys

from holysheep.cli import main

if __name__ == "__main__":
    sys.exit(main())
