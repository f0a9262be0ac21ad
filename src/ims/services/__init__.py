"""Use cases: create and patch records with link validation, soft delete, undelete, purge, jobs."""
