#!/usr/bin/env python3
"""Embeddings of a folder of audio files or of a manifest; the same as ``python -m sincmi embed``.

See :mod:`sincmi.extract` (``python tools/extract_embeddings.py --help``).
"""

from sincmi.extract import main

if __name__ == "__main__":
    main()
