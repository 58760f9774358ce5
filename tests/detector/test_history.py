from __future__ import annotations

import calendar
import hashlib
import io
import re
import threading

import numpy as np
import pytest
from PIL import Image

from detector_node.camera_sim import CameraSimulator
from detector_node.errors import HistoryError, SampleNotFound
from detector_node.history import History, HistoryConfig


def image(i: int, size: int = 32) -> np.ndarray:
    return np.random.default_rng(i).integers(0, 256, (size, size, 3), dtype=np.uint8)  # noise: PNG size ~ fixed


@pytest.fixture
def history(tmp_path):
    with History(HistoryConfig(root=tmp_path / "hist")) as h:
        yield h


def test_add_stores_png_under_the_documented_layout(history):
    when = calendar.timegm((2026, 3, 4, 12, 0, 0))
    img = CameraSimulator("brandA", 64).render(1, "scratch")
    s = history.add(img, "brandA", "scratch", "NG", when=when)
    assert re.fullmatch(r"[0-9a-f]{32}", s.id)
    assert s.path == f"brandA/scratch/20260304/{s.id}.png"
    data = (history.root / s.path).read_bytes()
    assert (s.size, s.sha256) == (len(data), hashlib.sha256(data).hexdigest())
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(data))), img)  # lossless
    assert (history.root / "index.db").exists()
    assert history.get(s.id) == s
    assert history.read_bytes(s.id) == (s, data)
    assert set(s.to_json()) == {"cursor", "id", "brand", "label", "verdict", "size", "sha256", "time"}


def test_list_pages_by_cursor_and_filters(history):
    added = [history.add(image(i), ("a", "b")[i % 2], ("good", "spot", "dent")[i % 3], "OK") for i in range(25)]
    cursors = [s.cursor for s in added]
    assert cursors == sorted(cursors) and len(set(cursors)) == 25
    seen, cursor = [], 0
    while True:
        page, cursor = history.list(cursor, 10)
        if not page:
            break
        assert len(page) <= 10
        seen += page
    assert seen == added
    assert history.list(cursor, 10) == ([], cursor)  # nothing newer: the cursor stays
    new = history.add(image(99), "a", "good")
    assert history.list(cursor, 10) == ([new], new.cursor)
    only_b, _ = history.list(0, 100, brand="b")
    assert [s.id for s in only_b] == [s.id for s in added if s.brand == "b"]
    spots_dents, _ = history.list(0, 100, brand="a", labels=["spot", "dent"])
    assert spots_dents and all(s.brand == "a" and s.label in ("spot", "dent") for s in spots_dents)
    assert history.list(0, 100, labels=[]) == ([], 0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"cursor": -1}, "cursor"), ({"limit": 0}, "limit"), ({"limit": 1001}, "limit"),
     ({"brand": "../x"}, "brand"), ({"labels": ["ok", "a/b"]}, "label")],
)
def test_list_refuses_bad_parameters(history, kwargs, match):
    with pytest.raises(HistoryError, match=match):
        history.list(**kwargs)


def test_names_and_ids_cannot_escape_the_root(history):
    for brand, label in [("../x", "good"), ("a", ".."), ("a/b", "good"), (".hidden", "good"), ("a", "")]:
        with pytest.raises(ValueError):
            history.add(image(0), brand, label)
    for bad in ["../index.db", "..", "/etc/passwd", "A" * 32, "0" * 31, "0" * 32 + "\n", 32]:
        with pytest.raises(HistoryError):
            history.open(bad)
    with pytest.raises(SampleNotFound):
        history.open("0" * 32)
    assert not list(history.root.parent.glob("x*"))


def test_size_bound_deletes_oldest_first(tmp_path):
    probe = History(HistoryConfig(root=tmp_path / "probe"))
    one = probe.add(image(0), "a", "good").size
    probe.close()
    cfg = HistoryConfig(root=tmp_path / "hist", max_bytes=5 * one + one // 2)
    with History(cfg) as h:
        added = [h.add(image(i), "a", ("good", "spot")[i % 2]) for i in range(20)]
        kept, _ = h.list(0, 100)
        assert [s.id for s in kept] == [s.id for s in added[-5:]]
        assert h.stats()["total_bytes"] == sum(s.size for s in kept) <= cfg.max_bytes
        for s in added[:-5]:
            assert not (h.root / s.path).exists()
            with pytest.raises(SampleNotFound):
                h.open(s.id)
        files = sorted(p.relative_to(h.root).as_posix() for p in h.root.rglob("*.png"))
        assert files == sorted(s.path for s in kept)
    with History(cfg) as h:  # reopened: the total is recomputed, cursors keep growing
        assert h.stats()["total_bytes"] == sum(s.size for s in kept)
        assert h.add(image(50), "a", "good").cursor == added[-1].cursor + 1
        assert len(h.list(0, 100)[0]) == 5


def test_a_sample_bigger_than_the_bound_is_kept_alone(tmp_path):
    with History(HistoryConfig(root=tmp_path / "h", max_bytes=10)) as h:
        h.add(image(1), "a", "good")
        last = h.add(image(2), "a", "good")
        assert h.list(0, 10)[0] == [last]


def test_empty_folders_are_removed_by_cleanup(tmp_path):
    with History(HistoryConfig(root=tmp_path / "h", max_bytes=10)) as h:
        h.add(image(1), "old", "spot")
        h.add(image(2), "new", "good")
        assert not (h.root / "old").exists()


def test_concurrent_writer_and_reader(tmp_path):
    n = 100
    with History(HistoryConfig(root=tmp_path / "h")) as h:
        errors: list[BaseException] = []
        seen: list[int] = []
        idle = threading.Event()  # never set: its wait() paces the reader's polling

        def writer():
            try:
                for i in range(n):
                    h.add(image(i, 16), "a", "good", "OK")
            except BaseException as exc:  # surfaced by the assertion below
                errors.append(exc)

        def reader():
            cursor = 0
            try:
                while len(seen) < n and not errors:
                    page, cursor = h.list(cursor, 7)
                    if not page:
                        idle.wait(0.001)
                    for s in page:
                        sample, data = h.read_bytes(s.id)
                        assert hashlib.sha256(data).hexdigest() == sample.sha256
                        seen.append(s.cursor)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=writer), threading.Thread(target=reader)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        assert not errors, errors
        assert seen == sorted(seen) and len(seen) == len(set(seen)) == n


def test_concurrent_reads_during_cleanup_never_see_a_wrong_file(tmp_path):
    with History(HistoryConfig(root=tmp_path / "h", max_bytes=8_000)) as h:
        stop = threading.Event()
        errors: list[BaseException] = []
        served = []

        def reader():
            try:
                while not stop.wait(0.002):
                    for s in h.list(0, 50)[0]:
                        try:
                            sample, data = h.read_bytes(s.id)
                        except SampleNotFound:
                            continue  # cleaned up between list and read: allowed
                        assert hashlib.sha256(data).hexdigest() == sample.sha256
                        served.append(sample.id)
            except BaseException as exc:
                errors.append(exc)

        t = threading.Thread(target=reader)
        t.start()
        for i in range(80):
            h.add(image(i, 16), ("a", "b")[i % 2], ("good", "spot")[i % 3 % 2])
        stop.set()
        t.join(timeout=30)
        assert not errors, errors
        assert served
        assert h.stats()["total_bytes"] <= 8_000


def test_closed_history_refuses(tmp_path):
    h = History(HistoryConfig(root=tmp_path / "h"))
    h.close()
    with pytest.raises(HistoryError, match="closed"):
        h.list()
    h.close()
