"""Records in a SQL database: SQLite (WAL) by default, PostgreSQL by URL."""
