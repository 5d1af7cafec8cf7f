"""bgsyncd: a hot-folder daemon for the WithoutBG background-removal API."""

__version__ = "0.2.0"
