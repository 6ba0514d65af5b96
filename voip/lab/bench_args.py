"""The lab benchmarks' command line, the check that the lab can run, and the tables they print."""

from __future__ import annotations

import argparse
import sys

from voip.lab.netns import lab_unavailable_reason


def lab_bench_parser(doc: str, repeat: int | None = None) -> argparse.ArgumentParser:
    """A parser described by the first line of `doc`, with --repeat (when given a default),
    --delay and --delay-relay, as the lab benchmarks take them."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    if repeat is not None:
        p.add_argument("--repeat", type=int, default=repeat)
    p.add_argument("--delay", type=float, default=5.0, help="one-way ms on each side")
    p.add_argument("--delay-relay", type=float, default=40.0, help="one-way ms to the relay")
    return p


def lab_ready() -> bool:
    """Whether the lab can run here; if not, says why on stderr."""
    if reason := lab_unavailable_reason():
        print(f"cannot run: {reason}", file=sys.stderr)
        return False
    return True


def table_head(*columns: str) -> None:
    """A Markdown table's head: the column names, and the line that makes them one."""
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))


def table_row(*cells: object) -> None:
    """One row of that table, shown at once: a lab row takes minutes to measure."""
    print("| " + " | ".join(str(cell) for cell in cells) + " |", flush=True)
