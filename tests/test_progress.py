"""One progress display for long work: plain lines each tenth of the way (with an ETA) off a terminal, a rich
bar on one."""

from __future__ import annotations

import io

from emu.progress import Progress


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_plain_lines_each_tenth_with_the_eta_of_the_pace_so_far():
    out, clock = io.StringIO(), Clock()
    p = Progress(20, stream=out, label="sweep", unit="points", clock=clock)
    for _ in range(20):
        clock.t += 0.5
        p.step()
    lines = out.getvalue().splitlines()
    assert len(lines) == 11  # the first point, then every second point of 20
    assert lines[0] == "sweep: 1/20 points, 0.5 s, ETA 10 s"  # 0.5 s a point, 19 left
    assert lines[1] == "sweep: 2/20 points, 1.0 s, ETA 9 s"
    assert lines[-1] == "sweep: 20/20 points, 10.0 s"


def test_labels_and_a_disabled_display():
    out = io.StringIO()
    p = Progress(3, stream=out, label="calibrate")
    p("copies")
    assert "calibrate: 1/3 steps (copies)" in out.getvalue()
    quiet = io.StringIO()
    q = Progress(3, stream=quiet, enabled=False)
    q("x")
    assert quiet.getvalue() == "" and q.done == 1


def test_a_terminal_gets_a_bar():
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    out = Terminal()
    p = Progress(4, stream=out, label="sweep", unit="points")
    for _ in range(4):
        p.step("lru")
    p.close()
    text = out.getvalue()
    assert "4/4" in text and "sweep lru" in text
