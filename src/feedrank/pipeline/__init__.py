"""The Recommender: composes retrieval, ranking and re-ranking under a deadline."""
