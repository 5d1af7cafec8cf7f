"""Several hosts on one PostgreSQL database: the hosts, this host's membership, the fleet's credits
and pauses.
"""
