"""What every training recipe shares: seeding, threads, progress."""
