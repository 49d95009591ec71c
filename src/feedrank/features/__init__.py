"""Features: id hashing and vocabularies, item catalogue arrays, user context, counters."""
