"""The configuration: its schema, its loading, the rules across keys, the folders it names."""
