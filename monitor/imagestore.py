"""ImageStore: a run's image grids as PNG files beside its log, a bounded number per window.

A run that logs a grid every 50 steps for 100k steps makes 2000 grids. The store keeps at most
``KEEP`` of each window's grids, spread evenly over the run, and always the latest: grid ``n``
(the n-th of its window) stays while ``n`` is a multiple of the stride, which doubles whenever
more than ``KEEP`` would stay. The run log names each grid's file and number,

    {"k": "image", "win": "inputs", "x": 50, "n": 1, "file": "images/5f2a.../inputs/0000001.png"}

so the windows built from a log (live, on resume, on replay) keep the same grids by the same
rule, and a file the rule has since removed is simply no longer shown.

    store = ImageStore("runs/mnist", run_id="5f2a")
    n, file = store.add("inputs", png_bytes)      # on the sink's worker
"""
from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

KEEP = 16  # grids kept per window besides the latest
FOLDER = "images"


def kept(numbers: list[int], keep: int = KEEP) -> list[int]:
    """Which of a window's grid numbers (ascending, the last the latest) the store keeps."""
    if not numbers:
        return []
    latest, stride = numbers[-1], 1
    while latest // stride > keep:
        stride *= 2
    return [n for n in numbers if n % stride == 0 or n == latest]


def run_dir_of(log: str | os.PathLike) -> Path:
    """The run folder a log's image files are named relative to (an earlier run's log is in ``earlier/``)."""
    folder = Path(log).resolve().parent
    return folder.parent if folder.name == "earlier" else folder


class ImageStore:
    """Writes grids under ``run_dir/images/<run id>/<window>/`` and removes those no longer kept."""

    def __init__(self, run_dir: str | os.PathLike, run_id: str) -> None:
        self.run_dir = Path(run_dir)
        self.run_id = run_id
        self._numbers: dict[str, list[int]] = {}  # window -> numbers of the files it has
        self._count: dict[str, int] = {}  # window -> grids logged so far

    def add(self, window: str, png: bytes) -> tuple[int, str]:
        """Stores the window's next grid; returns its number and its file, relative to the run folder."""
        n = self._count.get(window, 0) + 1
        self._count[window] = n
        relative = self._file(window, n)
        path = self.run_dir / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        partial.write_bytes(png)
        os.replace(partial, path)  # a reader never sees half a PNG
        numbers = self._numbers.setdefault(window, [])
        numbers.append(n)
        stays = kept(numbers)
        for gone in set(numbers) - set(stays):
            (self.run_dir / self._file(window, gone)).unlink(missing_ok=True)
        self._numbers[window] = stays
        return n, relative

    def restore(self, counts: dict[str, int]) -> None:
        """Continues a rewound run: ``counts`` grids of each window are in the kept part of its log.

        Files of grids logged after that point (the part of the log a resume cut off) are removed.
        """
        for window, count in counts.items():
            self._count[window] = count
            folder = self.run_dir / self._file(window, 1).rsplit("/", 1)[0]
            numbers = sorted(int(p.stem) for p in folder.glob("*.png") if p.stem.isdigit()) if folder.is_dir() else []
            for n in [n for n in numbers if n > count]:
                (folder / f"{n:07d}.png").unlink(missing_ok=True)
            self._numbers[window] = [n for n in numbers if n <= count]

    def _file(self, window: str, n: int) -> str:
        return f"{FOLDER}/{self.run_id}/{_folder_name(window)}/{n:07d}.png"


def _folder_name(window: str) -> str:
    """The window's name as a folder name: as written where it is safe, else with a short hash."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", window).strip("._") or "window"
    return safe if safe == window else f"{safe}-{hashlib.sha1(window.encode()).hexdigest()[:8]}"
