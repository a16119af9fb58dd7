#!/usr/bin/env python3
"""Packs a finished experiment into a model folder; the same as ``python -m sincmi export``.

See :mod:`sincmi.export` (``python tools/export_model.py --help``).
"""

from sincmi.export import main

if __name__ == "__main__":
    main()
