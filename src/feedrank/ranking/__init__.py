"""Ranking: the ranker model, its features, training recipe (calibration/compression later)."""
