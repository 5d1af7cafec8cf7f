"""One claimed job, from its input file to its outputs: what happened, what it means, carrying it
out.
"""
