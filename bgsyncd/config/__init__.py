"""The configuration: its schema, where it is read from, the rules no single field can check, the
folders it names.
"""
