"""Allow ``python -m bgsyncd``."""

from bgsyncd.cli import main

raise SystemExit(main())
