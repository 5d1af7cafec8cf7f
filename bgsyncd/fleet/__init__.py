"""Several hosts on one PostgreSQL database: the hosts, membership, fleet credits and pauses."""
