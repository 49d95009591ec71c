"""Ranking: the multi-task ranker (model, losses, training), its features and online
engagement counters, calibration, compression (int8, distilled, latency budget), fairness
measure and the serving-time runtime. See docs/ranking.md."""
