"""Files under the configured folders: reached through descriptors only, read, written
atomically, moved, named.
"""
