"""The configuration's names: its tables and the environment's prefix.

Shared by the schema (``config``), its messages (``config_errors``) and what
``check-config`` prints, so that none of them imports another for a name.
"""

from __future__ import annotations

ENV_PREFIX = "BGSYNCD_"
SECTIONS = ("api", "credits", "queue", "metrics", "logging")
TOP_LEVEL = (*SECTIONS, "folder")
