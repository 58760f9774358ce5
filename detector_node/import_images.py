"""Import a folder of real labelled images into a station's history.

``SRC_DIR`` holds one sub-folder per class label; every readable image in it
(any format Pillow reads) is centre-cropped to a square, resized to ``--size``
pixels, converted to RGB and stored as a sample of ``--brand`` with that label
and no verdict::

    python -m detector_node.import_images --history var/detector/history --brand brandA photos/
    photos/good/001.jpg  photos/scratch/x.png  ...

Unreadable files are reported and skipped; hidden files (``.name``) are ignored.
Exit status: 0 when at least one image was imported, 1 when none was, 2 on bad
arguments.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageOps

from detector_node.history import History, HistoryConfig
from detector_node.names import check_name


@dataclass
class ImportReport:
    imported: Counter[str] = field(default_factory=Counter)  # label -> count
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # (file or folder, reason)

    @property
    def total(self) -> int:
        return sum(self.imported.values())


def load_image(path: Path, size: int) -> Image.Image:
    """The image at ``path`` as an RGB ``size`` x ``size`` square (centre crop). Raises OSError or ValueError."""
    with Image.open(path) as img:
        img.load()
        return ImageOps.fit(ImageOps.exif_transpose(img).convert("RGB"), (size, size), Image.Resampling.LANCZOS)


def import_folder(history: History, brand: str, src: Path, size: int) -> ImportReport:
    """Import every image under ``src/<label>/`` (sorted, so the order is reproducible)."""
    check_name("brand", brand)
    if not src.is_dir():
        raise NotADirectoryError(f"{src} is not a folder")
    report = ImportReport()
    for folder in sorted(p for p in src.iterdir() if not p.name.startswith(".")):
        if not folder.is_dir():
            report.skipped.append((folder, "not inside a label folder"))
            continue
        try:
            label = check_name("label", folder.name)
        except ValueError as exc:
            report.skipped.append((folder, str(exc)))
            continue
        for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")):
            try:  # boundary: a file from outside
                image = load_image(path, size)
            except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:  # all seen from Pillow
                report.skipped.append((path, f"unreadable image: {exc}"))
                continue
            history.add(image, brand, label)
            report.imported[label] += 1
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m detector_node.import_images",
        description="Import labelled images (one sub-folder per class) into a station's history.",
    )
    parser.add_argument("--history", required=True, type=Path, help="history root folder of the station")
    parser.add_argument("--brand", required=True, help="product brand of the images")
    parser.add_argument("--size", type=int, default=64, help="square side in pixels (default 64)")
    parser.add_argument("--max-bytes", type=int, default=HistoryConfig().max_bytes,
                        help="history size bound; the oldest samples are deleted beyond it")
    parser.add_argument("src", type=Path, help="folder with one sub-folder per class label")
    args = parser.parse_args(argv)
    try:
        check_name("brand", args.brand)
    except ValueError as exc:
        parser.error(str(exc))
    if not args.src.is_dir():
        parser.error(f"{args.src} is not a folder")
    if not 8 <= args.size <= 1024:
        parser.error("--size must be in 8..1024")
    with History(HistoryConfig(root=args.history, max_bytes=args.max_bytes)) as history:
        report = import_folder(history, args.brand, args.src, args.size)
        stats = history.stats()
    for path, reason in report.skipped:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    per_label = ", ".join(f"{label}: {n}" for label, n in sorted(report.imported.items())) or "none"
    print(f"imported {report.total} images into {args.history} as brand {args.brand} ({per_label}); "
          f"skipped {len(report.skipped)}; history now holds {stats['count']} samples, {stats['total_bytes']} bytes")
    return 0 if report.total else 1


if __name__ == "__main__":
    raise SystemExit(main())
