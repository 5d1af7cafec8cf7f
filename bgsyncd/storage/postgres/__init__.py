"""The PostgreSQL engine: one database for a fleet of hosts; the only home of psycopg."""
