"""Candidate generation: the two-tower model, its training recipe, the ANN index, sources."""
