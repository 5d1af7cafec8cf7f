"""The daemon: choosing the backend, wiring the parts, the loop, signals, reloads, `once`."""
