"""Corpus preparation: audio folders -> CSV manifests (one module per corpus)."""
