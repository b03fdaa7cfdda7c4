"""Compression techniques, each a config type (in compress.recipe) and a function."""
