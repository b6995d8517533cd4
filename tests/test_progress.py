"""common.progress: the one progress line of the profiler, training and the benchmarks."""
from __future__ import annotations

import io
import threading

from common.progress import Progress


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_progress_rewrites_one_line_on_a_terminal():
    out = _Tty()
    p = Progress(3, "configs", stream=out)
    for i in range(4):
        p.update(i, "long text here" if i == 1 else "x")
    p.close()
    text = out.getvalue()
    assert text.count("\r") == 4 and text.endswith("\n") and text.count("\n") == 1
    assert "configs 3/3 [####################] x" in text


def test_progress_prints_throttled_lines_in_a_log():
    out = io.StringIO()
    p = Progress(5, "configs", stream=out, interval=3600)
    for i in range(6):
        p.update(i)
    p.close()
    lines = out.getvalue().splitlines()
    assert [line.split(" [")[0] for line in lines] == ["configs 0/5", "configs 5/5"]
    assert "\r" not in out.getvalue()


def test_progress_without_a_total_counts_and_ends_with_a_last_line():
    out = io.StringIO()
    p = Progress(None, "requests", stream=out, interval=3600)
    threads = [threading.Thread(target=lambda i=i: p.update(i, "busy")) for i in range(1, 9)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    p.close("requests 8 done")
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and lines[0].endswith(" busy") and "[" not in lines[0]
    assert lines[-1] == "requests 8 done"
    tty = _Tty()
    p = Progress(None, "requests", stream=tty)
    p.update(1, "a longer text")
    p.close("done")
    assert tty.getvalue() == "\rrequests 1 a longer text\r" + "done".ljust(24) + "\n"


def test_a_disabled_progress_writes_nothing():
    out = _Tty()
    p = Progress(2, "x", stream=out, enabled=False)
    p.update(1)
    p.close("end")
    assert out.getvalue() == ""
