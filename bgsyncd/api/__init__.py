"""The WithoutBG API: the one client, what its answers mean, its endpoints, the account's outage."""
