"""Make the README's before/after pictures with the demo itself (a real run).

Runs ``bgsyncd demo`` in a fresh folder, waits until the product sample's
cut-out and its marketplace rendition are written, stops the demo (SIGINT,
as Ctrl-C would) and copies the three pictures into ``docs/pictures``:

    .venv/bin/python scripts/readme_pictures.py
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "pictures"
PICTURES = {  # in the demo folder -> in docs/pictures
    "inbox/product.jpg": "product-before.jpg",
    "outbox/product.png": "product-cutout.png",
    "marketplace/product.jpg": "product-amazon.jpg",
    "inbox/portrait.png": "portrait-before.png",
    "outbox/portrait.png": "portrait-cutout.png",
    "marketplace/portrait.jpg": "portrait-amazon.jpg",
}


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        demo_dir = Path(tmp) / "demo"
        proc = subprocess.Popen(
            [sys.executable, "-m", "bgsyncd", "demo", "--dir", str(demo_dir)],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            # The inputs are copied first: after_success keeps them in the demo.
            deadline = time.monotonic() + 120
            while not all((demo_dir / rel).exists() for rel in PICTURES):
                if proc.poll() is not None or time.monotonic() > deadline:
                    print("the demo did not write its pictures", file=sys.stderr)
                    return 1
                time.sleep(0.2)
            OUT.mkdir(parents=True, exist_ok=True)
            for rel, name in PICTURES.items():
                shutil.copyfile(demo_dir / rel, OUT / name)
                print(f"{OUT / name}")
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(60)
    return 0


if __name__ == "__main__":
    sys.exit(main())
