#!/usr/bin/env python
"""Write the tests' tiny random-weight model fixtures under tests/fixtures/models/ with the
builders zspa-selfcheck uses (zspa_selfcheck/fixtures.py says what each one is).

Run:  python scripts/make_fixtures.py [--out tests/fixtures/models] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from zspa_selfcheck.fixtures import BUILDERS, build  # noqa: E402

DEFAULT_OUT = REPO_ROOT / "tests" / "fixtures" / "models"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--only", nargs="*", choices=sorted(BUILDERS), default=None)
    args = ap.parse_args()
    for name in args.only or BUILDERS:
        note = build(name, args.out / name)
        print(f"{name}: {note['architecture']}, {note['parameters']} parameters -> {args.out / name}")


if __name__ == "__main__":
    main()
