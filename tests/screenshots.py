"""Screenshots of the built report with headless Chromium (Debian package ``chromium``):
the first page of ``index.html`` and the first feature card, into ``<report>/screenshots/``.

    python tests/screenshots.py [results/report] [--width 1280] [--height 1800]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def browser() -> str:
    """The first headless-capable Chromium on PATH."""
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    raise SystemExit(
        "no Chromium on PATH: apt-get install chromium (Debian) or put google-chrome on PATH"
    )


def shoot(page: Path, png: Path, width: int, height: int) -> Path:
    """One viewport-sized PNG of ``page`` (the top of the page)."""
    png.parent.mkdir(parents=True, exist_ok=True)
    command = [
        browser(),
        "--headless",
        "--no-sandbox",  # root in containers
        "--disable-gpu",
        "--hide-scrollbars",
        "--force-device-scale-factor=1",
        f"--window-size={width},{height}",
        f"--screenshot={png.resolve()}",
        page.resolve().as_uri(),
    ]
    subprocess.run(command, check=True, capture_output=True, timeout=180)
    if not png.exists():
        raise SystemExit(f"chromium wrote no screenshot of {page}")
    return png


def first_card(report: Path) -> Path | None:
    """The first card listed by the first cards.csv under ``report/features`` (sorted)."""
    for listing in sorted((report / "features").rglob("cards.csv")):
        lines = listing.read_text().splitlines()
        if len(lines) > 1:
            header = lines[0].split(",")
            name = lines[1].split(",")[header.index("file")]
            return listing.parent / name
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", nargs="?", default="results/report", type=Path)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=1800)
    args = parser.parse_args(argv)
    index = args.report / "index.html"
    if not index.exists():
        raise SystemExit(f"{index} does not exist: build it with snakemake {index}")
    out = args.report / "screenshots"
    shots = [shoot(index, out / "index.png", args.width, args.height)]
    card = first_card(args.report)
    if card is not None:
        shots.append(shoot(card, out / "feature_card.png", args.width, args.height))
    for path in shots:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
