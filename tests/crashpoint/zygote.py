"""A warm `python -m recommender` for tests/test_crash_safety.py: imports once, then forks one child per run.

Reads one JSON job a line from stdin, {"args": [...], "env": {...}}; forks; the child sets `env`
(the crash point of sitecustomize.py) and runs the CLI with `args`, its output discarded; the
parent answers one JSON line, {"status": exit status, negative for a signal}. Forking skips the
seconds a fresh interpreter spends importing torch, so every write phase can be killed in CI.
"""

from __future__ import annotations

import json
import os
import sys

from recommender.cli import cli


def run(job: dict) -> int:
    pid = os.fork()
    if pid == 0:  # the child: a whole CLI run, as `python -m recommender` makes it
        quiet = os.open(os.devnull, os.O_WRONLY)
        os.dup2(quiet, 1)
        os.dup2(quiet, 2)
        os.environ.update(job["env"])
        code = 0
        try:
            cli.main(args=job["args"], prog_name="recommender")
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            code = 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


if __name__ == "__main__":
    for line in sys.stdin:
        print(json.dumps({"status": run(json.loads(line))}), flush=True)
