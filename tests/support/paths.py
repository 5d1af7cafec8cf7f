"""Where the repository is, for tests that read its files or run from its root.

One place, so a test module can live at any depth under tests/.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
"""The repository's root (this file is tests/support/paths.py)."""
