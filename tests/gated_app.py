"""app.py with the build of its default index held at a gate (a file): for the tests of a first start.

While the file named by RECOMMENDER_TEST_GATE exists, the build waits before its 41st picture, so
that a test sees the page served, the progress shown and a search refused, then removes the file.
"""

from __future__ import annotations

import os
import runpy
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script, its own folder (tests/) comes first: the checkout's package

from recommender import service  # noqa: E402

GATE = Path(os.environ["RECOMMENDER_TEST_GATE"])
HELD_AFTER = 40  # pictures: past the point where the page tells how long the rest takes

_picture = service.Warmup.picture


def held(self: service.Warmup) -> None:
    while self.done >= HELD_AFTER and GATE.exists():
        time.sleep(0.05)
    _picture(self)


service.Warmup.picture = held  # type: ignore[method-assign]
runpy.run_path(str(ROOT / "app.py"), run_name="__main__")
