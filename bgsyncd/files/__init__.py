"""Files under the configured folders, by descriptor only: read, written atomically, moved."""
