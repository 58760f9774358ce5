"""The cloud latency bench, small and fast: the same code as ``python -m bench.cloud_bench``, few samples.

The whole run starts the embedded broker, the cloud's listener, worker and web processes
and a simulated edge; it must collect every sample and print a table of plausible figures.
"""

from __future__ import annotations

import io
import re

import pytest

from bench.cloud_bench import COMMAND, PROGRESS, RESPONSE, Metric, main, table
from bench.cloud_live import parse_sse

ROW = re.compile(r"^(?P<name>.+?)\s+(?P<p50>[\d.]+|n/a)\s+(?P<p99>[\d.]+|n/a)\s+(?P<n>\d+)$")


def rows(out: str) -> dict[str, tuple[float, float, int]]:
    found = {}
    for line in out.splitlines():
        m = ROW.match(line)
        if m and m["name"] in (COMMAND, RESPONSE, PROGRESS):
            assert m["p50"] != "n/a" and m["p99"] != "n/a", line
            found[m["name"]] = (float(m["p50"]), float(m["p99"]), int(m["n"]))
    return found


def test_bench_measures_both_paths_end_to_end(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["-n", "4", "-m", "12", "--warmup", "1", "--interval", "0.1", "--rate", "40", "--timeout", "60"])
    out = capsys.readouterr().out
    assert rc == 0, out
    got = rows(out)
    assert set(got) == {COMMAND, RESPONSE, PROGRESS}, out
    assert got[COMMAND][2] == got[RESPONSE][2] == 4 and got[PROGRESS][2] == 12, out
    for p50, p99, _ in got.values():
        assert 0 < p50 <= p99, out
    # no dispatch retry (ack timeout 10 s in the shipped config) and no stream stalls
    assert got[COMMAND][1] < 10_000 and got[PROGRESS][1] < 5_000, out
    assert "polls the database every 250 ms" in out, out


def test_metric_percentiles_and_completeness() -> None:
    m = Metric("x", 4, [0.004, 0.001, 0.003, 0.002])
    assert m.percentile(0.5) == pytest.approx(3.0) and m.percentile(0.99) == pytest.approx(4.0)
    assert m.complete and not Metric("y", 5, [0.1]).complete
    assert Metric("z", 1).percentile(0.5) is None
    text = table([m, Metric("z", 1)], ["a note"])
    assert re.search(r"^x\s+3\.0\s+4\.0\s+4$", text, re.MULTILINE)
    assert re.search(r"^z\s+n/a\s+n/a\s+0$", text, re.MULTILINE)
    assert text.endswith("note: a note")


def test_sse_frames_are_parsed_and_stamped() -> None:
    raw = (b"retry: 2000\n\n"
           b"event: task\ndata: {\"state\":\"ACCEPTED\"}\n\n"
           b": keep-alive\n\n"
           b"id: 1.0.2\nevent: progress\ndata: {\"batch\":7}\n\n"
           b"id: 5\n\n"
           b"data: plain\n\n")
    frames = list(parse_sse(io.BytesIO(raw).readline))
    assert [(e, d) for _, e, d in frames] == [("task", {"state": "ACCEPTED"}), ("progress", {"batch": 7}),
                                              ("message", "plain")]
    stamps = [t for t, _, _ in frames]
    assert stamps == sorted(stamps)
