"""Summarize a py-spy ``--format raw`` (collapsed stacks) profile: top functions by own and total time.

``python bench/pyspy_summary.py profile.txt [--top 25] [--per-request N]``: with the number of
requests served during the recording, also prints µs of CPU per request for each line.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

IDLE = re.compile(r"\b(select|epoll|poll|_run_once|run_forever)\b")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("profile")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--rate", type=int, default=200, help="py-spy sampling rate (Hz)")
    parser.add_argument("--requests", type=int, default=0, help="requests served while recording")
    args = parser.parse_args()
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for line in Path(args.profile).read_text(encoding="utf-8").splitlines():
        stack, _, count = line.rstrip("\n").rpartition(" ")
        if not stack:
            continue
        n = int(count)
        frames = [
            re.sub(r" \((?:/[^)]*/)?([^/)]*)\)$", r" (\1)", f.split(":")[0] if False else f)
            for f in stack.split(";")
        ]
        frames = [re.sub(r":\d+\)$", ")", f) for f in frames]
        samples += n
        own[frames[-1]] += n
        for frame in set(frames):
            total[frame] += n
    print(
        f"{samples} samples at {args.rate} Hz = {samples / args.rate:.1f} s of sampled time "
        "(idle samples included unless py-spy ran with --idle off)"
    )
    scale = (1e6 / args.rate / args.requests) if args.requests else None
    for title, counter in (("own time", own), ("total (inclusive) time", total)):
        print(f"\n-- top {args.top} by {title} --")
        for frame, n in counter.most_common(args.top):
            extra = f"  {n * scale:7.1f} µs/req" if scale else ""
            print(f"{100 * n / samples:5.1f}%{extra}  {frame[:150]}")


if __name__ == "__main__":
    main()
