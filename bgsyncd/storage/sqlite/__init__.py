"""The SQLite engine: one host, one database file, its lock."""
