"""Versioned model bundles: a folder of files plus a manifest with their hashes."""
