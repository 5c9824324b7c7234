"""`make bench` (or `python -m bench [NAME ...]`): run every benchmark module, or those named.

A benchmark is a module of this package with an async `main()` that prints its figures; it
starts the real servers it needs (a nats-server on a free port, the local Cassandra node).
"""

from __future__ import annotations

import asyncio
import importlib
import pkgutil
import sys
from pathlib import Path


def main(argv: list[str]) -> None:
    names = argv or sorted(
        m.name for m in pkgutil.iter_modules([str(Path(__file__).parent)]) if not m.name.startswith("_")
    )
    for name in names:
        module = importlib.import_module(f"bench.{name}")
        print(f"== {name}", flush=True)
        asyncio.run(module.main())


if __name__ == "__main__":
    main(sys.argv[1:])
