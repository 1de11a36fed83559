"""scripts/profile_streaming.py: its accounting. Each timed call counts once, in its innermost
stage, so a thread's stages add up to the thread's lifetime; waits are told apart from work;
threads the profile does not follow are not timed. The live run itself is the coordinator's.
"""

from __future__ import annotations

import importlib.util
import sys
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def profile_streaming():
    spec = importlib.util.spec_from_file_location("profile_streaming", REPO / "scripts" / "profile_streaming.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


class Work:
    def __init__(self) -> None:
        self.cond = threading.Condition()

    def run(self) -> None:
        for _ in range(3):
            self.outer()
            with self.cond:
                self.cond.wait(0.02)

    def outer(self) -> None:
        time.sleep(0.02)
        self.inner()

    def inner(self) -> None:
        time.sleep(0.03)


def test_stages_add_up_to_the_thread_lifetime(profile_streaming):
    p = profile_streaming
    profiler = p.StageProfiler()
    profiler.wrap_root(Work, "run")
    profiler.wrap(Work, "outer", "outer")
    profiler.wrap(Work, "inner", "inner")
    profiler.wrap(threading.Condition, "wait", p.wait_stage)
    try:
        Work().outer()  # not a profiled thread: passes straight through
        worker = threading.Thread(target=Work().run, name="inference")
        worker.start()
        worker.join()
    finally:
        profiler.remove()
    assert Work.outer.__name__ == "outer" and not hasattr(Work.outer, "__wrapped__")

    summary = p.role_summary(profiler, p.WORKER)
    rows = {row["stage"]: row for row in summary["stages"]}
    assert summary["threads"] == 1
    assert rows["outer"]["calls"] == 3 and rows["inner"]["calls"] == 3
    # outer's own time excludes inner's
    assert 0.06 <= rows["outer"]["wall_s"] < 0.06 + 0.05
    assert 0.09 <= rows["inner"]["wall_s"] < 0.09 + 0.05
    assert rows[p.IDLE]["wait"] and rows[p.IDLE]["calls"] == 3 and rows[p.IDLE]["wall_s"] >= 0.06
    assert summary["busy_s"] == pytest.approx(summary["wall_s"] - rows[p.IDLE]["wall_s"])
    assert sum(row["wall_s"] for row in summary["stages"]) == pytest.approx(summary["wall_s"], abs=1e-9)
    assert 0.0 <= rows[p.OTHER]["wall_s"] < 0.02
