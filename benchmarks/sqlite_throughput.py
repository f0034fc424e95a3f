"""Kept for ``make bench`` and the README: ``throughput.py`` on SQLite, its default store."""

import sys

from throughput import main

if __name__ == "__main__":
    sys.exit(main())
