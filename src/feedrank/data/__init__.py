"""Data layer: the canonical dataset format, importers, the synthetic world, time splits."""
