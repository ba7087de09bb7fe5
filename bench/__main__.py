"""`python -m bench [NAME ...]`: run the benchmarks and rewrite docs/benchmarks.md.

Every figure is a ratio to a baseline measured in the same run on the same machine, so that the
numbers mean the same on a laptop and in CI. Each module's `run()` prints its figures and returns
a markdown section.
"""

from __future__ import annotations

import importlib
import os
import platform
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

MODULES = ["bench.readmodel", "bench.cluster", "bench.audit", "bench.http", "bench.web"]
MARK = "<!-- section: "
OUTPUT = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


def machine() -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "unknown CPU",
    )
    redis_version = subprocess.run(
        ["redis-server", "--version"], capture_output=True, text=True, check=False
    ).stdout.split()[2:3]
    return (
        f"{os.cpu_count()} cores ({cpu}), Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}, redis-server {' '.join(redis_version)}"
    )


def main(names: list[str]) -> None:
    """Run the named benchmarks (all by default); sections of the others are kept as they were."""
    known = [name.rsplit(".", 1)[1] for name in MODULES]
    if unknown := [name for name in names if name not in known]:
        # Before anything runs, and before docs/benchmarks.md is written again.
        sys.exit(f"unknown benchmark {', '.join(unknown)}: expected some of {', '.join(known)}")
    sections = previous_sections()
    for name in MODULES:
        if names and name.rsplit(".", 1)[1] not in names:
            continue
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as error:
            if error.name != name:
                raise
            print(f"{name}: not there yet, skipped", file=sys.stderr)
            continue
        print(f"== {name}", flush=True)
        sections[name] = f"{MARK}{name} -->\n{stamped(module.run().strip())}\n"
    header = (
        "# Benchmarks\n\n"
        "Written by `make bench` (`python -m bench [readmodel|cluster|audit|http|web]`); each "
        "section says when it was last run and on what machine.\n"
        "Load generators run on the same machine. Every goal is a ratio to a baseline measured "
        "in the same run, so the figures carry over between machines better than raw rates.\n"
    )
    # Each section stripped: read back and written again, it keeps its size run after run.
    body = "\n\n".join(sections[name].strip() for name in MODULES if name in sections)
    OUTPUT.write_text(header + "\n" + body + "\n")
    print(f"wrote {OUTPUT}")


def stamped(section: str) -> str:
    """The section with when and where it ran under its heading: a run of some sections keeps
    the others, which may come from another day's machine."""
    heading, _, rest = section.partition("\n")
    return f"{heading}\n\nRun on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, on: {machine()}.\n{rest}"


def previous_sections() -> dict[str, str]:
    if not OUTPUT.exists():
        return {}
    parts = OUTPUT.read_text().split(MARK)[1:]
    return {part.split(" -->", 1)[0]: MARK + part for part in parts}


if __name__ == "__main__":
    if {"-h", "--help"} & set(sys.argv[1:]):
        print(__doc__.strip())
        print(f"NAME: any of {', '.join(name.rsplit('.', 1)[1] for name in MODULES)}")
    else:
        main(sys.argv[1:])
