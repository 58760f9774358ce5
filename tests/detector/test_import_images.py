from __future__ import annotations

import io
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from detector_node.history import History, HistoryConfig
from detector_node.import_images import import_folder, main


def write_image(path, size=(40, 30), mode="RGB", fmt="PNG", seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    data = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    Image.fromarray(data.squeeze(), mode).save(path, format=fmt)


@pytest.fixture
def src(tmp_path):
    root = tmp_path / "photos"
    write_image(root / "good" / "a.png", (80, 60))
    write_image(root / "good" / "b.jpg", (30, 50), fmt="JPEG", seed=1)
    write_image(root / "good" / "gray.png", (64, 64), mode="L", seed=2)
    write_image(root / "scratch" / "s1.png", (100, 100), mode="RGBA", seed=3)
    write_image(root / "scratch" / "deeper" / "s2.png", (20, 20), seed=4)
    (root / "scratch" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(200)))
    buf = io.BytesIO()
    Image.fromarray(np.zeros((50, 50, 3), np.uint8)).save(buf, format="PNG")
    (root / "good" / "truncated.png").write_bytes(buf.getvalue()[:60])
    (root / "good" / "notes.txt").write_text("not an image")
    (root / "good" / ".DS_Store").write_bytes(b"\0\0")
    (root / "README").write_text("stray file")
    (root / "bad label!").mkdir()
    return root


def test_cli_imports_readable_images_and_reports_the_rest(src, tmp_path, capsys):
    hist = tmp_path / "hist"
    assert main(["--history", str(hist), "--brand", "brandA", "--size", "48", str(src)]) == 0
    out, err = capsys.readouterr()
    assert "imported 5 images" in out and "good: 3" in out and "scratch: 2" in out and "skipped 5" in out
    for name in ("corrupt.png", "truncated.png", "notes.txt", "README", "bad label!"):
        assert name in err
    assert ".DS_Store" not in err
    with History(HistoryConfig(root=hist)) as h:
        samples, _ = h.list(0, 100)
        assert sorted(s.label for s in samples) == ["good"] * 3 + ["scratch"] * 2
        assert all(s.brand == "brandA" and s.verdict is None for s in samples)
        for s in samples:
            with Image.open(h.root / s.path) as img:
                assert img.size == (48, 48) and img.mode == "RGB"


def test_import_is_reproducible_in_order(src, tmp_path):
    with History(HistoryConfig(root=tmp_path / "h")) as h:
        report = import_folder(h, "b", src, 32)
        assert report.total == 5
        assert [s.label for s in h.list(0, 100)[0]] == ["good", "good", "good", "scratch", "scratch"]


def test_nothing_imported_exits_non_zero(tmp_path, capsys):
    src = tmp_path / "src"
    (src / "good").mkdir(parents=True)
    (src / "good" / "x.png").write_bytes(b"garbage")
    assert main(["--history", str(tmp_path / "h"), "--brand", "b", str(src)]) == 1
    out, err = capsys.readouterr()
    assert "imported 0 images" in out and "x.png" in err


@pytest.mark.parametrize(
    "args", [["--brand", "../evil"], ["--brand", "b", "--size", "4"], ["--brand", "b", "--missing-src"]]
)
def test_bad_arguments_exit_2(tmp_path, args, capsys):
    if "--missing-src" in args:
        args = ["--brand", "b", str(tmp_path / "nope")]
    else:
        args = [*args, str(tmp_path)]
    with pytest.raises(SystemExit) as info:
        main(["--history", str(tmp_path / "h"), *args])
    assert info.value.code == 2
    assert not (tmp_path / "h").exists()


def test_module_entry_point(src, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "detector_node.import_images", "--history", str(tmp_path / "h"), "--brand", "b",
         str(src)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "imported 5 images" in proc.stdout
