"""feedrank: a news-feed recommendation system (retrieval, ranking, re-ranking, serving)."""

__version__ = "0.1.0"
