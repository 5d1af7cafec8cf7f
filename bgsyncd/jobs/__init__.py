"""One claimed job from its input to its outputs: what happened, what it means, carrying it out."""
