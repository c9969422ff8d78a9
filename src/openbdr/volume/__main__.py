"""`python -m openbdr.volume IMAGE [--json]`: the `openbdr inspect` output for a local file."""

from __future__ import annotations

import argparse
import json
import sys

from .layout import analyze, render_text
from .reader import FileReader


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m openbdr.volume")
    parser.add_argument("source", help="disk image or block device")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    try:
        reader = FileReader(args.source)
    except OSError as exc:
        print(
            f"cannot open {args.source}: {exc.strerror} (check the path and permissions)",
            file=sys.stderr,
        )
        return 1
    with reader:
        layout = analyze(reader)
    if args.json:
        print(json.dumps(layout.to_json(), indent=2))
    else:
        sys.stdout.write(render_text(layout))
    return 0


if __name__ == "__main__":
    sys.exit(main())
