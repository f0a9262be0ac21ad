"""A database-backed queue for long work, with leases so a crashed worker's task is taken up again."""
