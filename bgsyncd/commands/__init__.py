"""The commands beside the daemon: status, retry, credits, demo."""
