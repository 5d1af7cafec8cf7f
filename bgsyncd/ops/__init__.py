"""What operators watch: Prometheus metrics, their HTTP server, sd_notify."""
