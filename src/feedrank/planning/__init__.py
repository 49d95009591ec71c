"""Capacity planning from measured benchmark results (`feedrank plan`)."""
