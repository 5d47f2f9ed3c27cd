"""A fake agent for the fault suite that writes its own execution ledger (stdlib only).

It runs as a shell task's `command`, e.g.

    FAULT_MARKER=<run> /abs/python /abs/tests/faults/ledger_agent.py --ledger /tmp/x/ledger.jsonl --sleep 0.3

and appends one JSON line per event to the ledger: `start` when it begins, `end` when it finishes its work
(with `"ok": true|false`). Each line carries the task id, attempt and lease orch gave it (ORCH_TASK_ID,
ORCH_ATTEMPT, ORCH_LEASE), its pid and host, and the time. A line is one `write` on an O_APPEND descriptor, so
lines of concurrent agents never interleave.

Misbehaviours on demand:
  --fail                  exit 1 after its work (every attempt)
  --fail-until N          exit 1 while ORCH_ATTEMPT <= N, succeed after
  --hang                  after `start`, sleep forever (no `end`)
  --ignore-term           ignore SIGTERM (only SIGKILL ends it)
  --fork N                fork N grandchildren that ignore SIGTERM and sleep forever
  --flood BYTES           write BYTES of output to stdout as fast as it can (-1: forever)
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
import time

LINE = b"y" * 1023 + b"\n"


def ledger_line(ledger: str, event: str, **extra: object) -> None:
    record = {
        "event": event,
        "plan": os.environ.get("ORCH_PLAN_ID", ""),
        "task": os.environ.get("ORCH_TASK_ID", ""),
        "attempt": int(os.environ.get("ORCH_ATTEMPT", "0") or 0),
        "lease": os.environ.get("ORCH_LEASE", ""),
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "time": time.time(),
        **extra,
    }
    data = (json.dumps(record, sort_keys=True) + "\n").encode()
    fd = os.open(ledger, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)  # one write on O_APPEND: atomic with respect to other appenders for a short line
    finally:
        os.close(fd)


def sleep_forever() -> None:
    while True:
        time.sleep(3600)


def fork_grandchildren(count: int) -> list[int]:
    pids = []
    for _ in range(count):
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            try:
                sleep_forever()
            finally:
                os._exit(0)
        pids.append(pid)
    return pids


def flood(total: int) -> None:
    """Write `total` bytes of output (forever if negative) in 64 KiB blocks."""
    out = sys.stdout.buffer
    block = LINE * 64
    written = 0
    while total < 0 or written < total:
        piece = block if total < 0 else block[: total - written]
        out.write(piece)
        written += len(piece)
    out.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ledger", required=True)
    parser.add_argument("--sleep", type=float, default=0.0)
    parser.add_argument("--fail", action="store_true")
    parser.add_argument("--fail-until", type=int, default=0)
    parser.add_argument("--hang", action="store_true")
    parser.add_argument("--ignore-term", action="store_true")
    parser.add_argument("--fork", type=int, default=0)
    parser.add_argument("--flood", type=int, default=0)
    args = parser.parse_args(argv)

    if args.ignore_term:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    ledger_line(args.ledger, "start")
    children = fork_grandchildren(args.fork) if args.fork else []
    if children:
        ledger_line(args.ledger, "forked", children=children)
    if args.flood:
        flood(args.flood)
    if args.hang:
        sleep_forever()
    if args.sleep:
        time.sleep(args.sleep)
    attempt = int(os.environ.get("ORCH_ATTEMPT", "0") or 0)
    ok = not args.fail and attempt > args.fail_until
    ledger_line(args.ledger, "end", ok=ok)
    print(f"ledger agent: task {os.environ.get('ORCH_TASK_ID', '?')} attempt {attempt}: {'ok' if ok else 'failing'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
