"""monitor.assets on temporary copies of visdom's static folder (the real one is only read)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from monitor.assets import ASSETS, VERSION_MARKER, AssetsError, ensure_assets, missing_assets, visdom_static_dir

needs_npm = pytest.mark.skipif(shutil.which("npm") is None, reason="npm is not on PATH")


@pytest.fixture
def static_copy(tmp_path: Path) -> Path:
    """A complete copy of visdom's static folder, named ``static`` like the original."""
    ensure_assets()
    return Path(shutil.copytree(visdom_static_dir(), tmp_path / "static"))


def test_installed_visdom_is_complete_and_a_second_run_installs_nothing() -> None:
    ensure_assets()
    assert missing_assets() == []
    assert ensure_assets() == []
    marker = (visdom_static_dir() / VERSION_MARKER).read_text().strip()
    assert marker == (visdom_static_dir().parent / "VERSION").read_text().strip()


def test_empty_folder_misses_every_asset_and_the_marker(tmp_path: Path) -> None:
    assert missing_assets(tmp_path) == [a.path for a in ASSETS] + [VERSION_MARKER]


def test_stale_marker_counts_as_missing(static_copy: Path) -> None:
    (static_copy / VERSION_MARKER).write_text("0.0.1")
    assert missing_assets(static_copy) == [VERSION_MARKER]
    assert ensure_assets(static_copy, visdom_download=False) == [VERSION_MARKER]
    assert missing_assets(static_copy) == []


@needs_npm
def test_npm_installs_only_the_missing_files_and_marks_the_folder_built(static_copy: Path) -> None:
    removed = ["js/sjcl.js", "fonts/classnames", "js/mathjax/2.7.5/extensions/Safe.js"]
    originals = {path: (static_copy / path).read_bytes() for path in removed}
    for path in removed:
        (static_copy / path).unlink()
    (static_copy / VERSION_MARKER).unlink()
    untouched = static_copy / "js/plotly-plotly.min.js"
    mtime = untouched.stat().st_mtime_ns

    assert ensure_assets(static_copy, visdom_download=False) == removed + [VERSION_MARKER]

    assert missing_assets(static_copy) == []
    assert (static_copy / "js/sjcl.js").read_bytes() == originals["js/sjcl.js"]
    assert (static_copy / "fonts/classnames").read_bytes() == originals["fonts/classnames"]
    assert untouched.stat().st_mtime_ns == mtime


@needs_npm
def test_default_route_completes_a_partial_folder_online_or_offline(static_copy: Path) -> None:
    # visdom's own download first (it fails without internet access to its CDNs), then npm.
    (static_copy / "js/d3-selection-multi.v1.js").unlink()
    assert ensure_assets(static_copy) == ["js/d3-selection-multi.v1.js"]
    assert missing_assets(static_copy) == []


def test_missing_npm_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(AssetsError, match=r"30 dashboard asset\(s\) missing .* `npm` is not on PATH.*monitor assets"):
        ensure_assets(tmp_path / "static", visdom_download=False)


def test_unwritable_static_dir_is_a_clear_error(tmp_path: Path) -> None:
    regular_file = tmp_path / "a-file"
    regular_file.write_text("")
    with pytest.raises(AssetsError, match=r"static_dir must be a writable folder .*a-file/static"):
        ensure_assets(regular_file / "static", visdom_download=False)


def test_checking_assets_imports_neither_visdom_nor_torch() -> None:
    code = "import sys, monitor.assets as a; a.missing_assets(); print('visdom' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
