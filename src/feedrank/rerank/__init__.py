"""Re-ranking: pure policies over a ranked list (no I/O, no clock: ``now`` is passed in)."""
