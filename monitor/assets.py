"""Visdom's dashboard assets: check them, and install the missing ones without a browser CDN.

visdom 0.2.4 ships its page without the JavaScript, CSS and fonts it needs and fetches them from
public CDNs on every ``python -m visdom.server``; offline that step crashes the server, and a server
started without them serves a blank page. This module puts the same files in place once, by
visdom's own download when it works and otherwise through the ``npm`` client, then writes
``static/version.built`` so visdom considers them installed.

Example::

    from monitor.assets import ensure_assets
    installed = ensure_assets()   # [] when everything was already there

Nothing here imports visdom (that would import torch, ~3 s): the package is located with
``importlib.util.find_spec``.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import NamedTuple

from monitor.atomic import write_atomic

__all__ = ["ASSETS", "AssetsError", "Asset", "ensure_assets", "missing_assets", "visdom_static_dir"]

_log = logging.getLogger(__name__)

_MATHJAX_FILES = (
    "config/Safe.js",
    "config/TeX-AMS-MML_HTMLorMML.js",
    "extensions/Safe.js",
    "jax/output/SVG/fonts/TeX/fontdata.js",
    "jax/output/SVG/jax.js",
    "jax/output/SVG/fonts/TeX/Size1/Regular/Main.js",
    "jax/output/SVG/config.js",
    "MathJax.js",
)
_GLYPHICONS = "fonts/glyphicons-halflings-regular"


class Asset(NamedTuple):
    """One file visdom's page needs: where it goes under ``static/`` and where npm has it."""

    path: str
    """Destination, relative to visdom's ``static/`` folder."""
    package: str
    """npm package spec, ``name@version``."""
    member: str
    """Path of the file inside the package."""


ASSETS: tuple[Asset, ...] = (
    Asset("js/jquery.min.js", "jquery@3.1.1", "dist/jquery.min.js"),
    Asset("js/bootstrap.min.js", "bootstrap@3.3.7", "dist/js/bootstrap.min.js"),
    Asset("css/bootstrap.min.css", "bootstrap@3.3.7", "dist/css/bootstrap.min.css"),
    *(
        Asset(f"{_GLYPHICONS}.{ext}", "bootstrap@3.3.7", f"dist/{_GLYPHICONS}.{ext}")
        for ext in ("eot", "woff2", "woff", "ttf", "svg")
    ),
    # visdom's server checks for this literal file name (a URL fragment it saved as a file).
    Asset(f"{_GLYPHICONS}.svg#glyphicons_halflingsregular", "bootstrap@3.3.7", f"dist/{_GLYPHICONS}.svg"),
    Asset("js/react-react.min.js", "react@16.2.0", "umd/react.production.min.js"),
    Asset("js/react-dom.min.js", "react-dom@16.2.0", "umd/react-dom.production.min.js"),
    Asset("js/react-modal.min.js", "react-modal@3.1.10", "dist/react-modal.min.js"),
    Asset("js/plotly-plotly.min.js", "plotly.js-dist-min@2.11.1", "plotly.min.js"),
    Asset("js/sjcl.js", "sjcl@1.0.7", "sjcl.js"),
    Asset("js/layout_bin_packer.js", "layout-bin-packer@1.4.0", "dist/layout-bin-packer.js"),
    Asset("js/layout-bin-packer.js.map", "layout-bin-packer@1.4.0", "dist/layout-bin-packer.js.map"),
    Asset("js/d3.v3.min.js", "d3@3.5.17", "d3.min.js"),
    Asset("js/d3-selection-multi.v1.js", "d3-selection-multi@1.0.1", "build/d3-selection-multi.js"),
    Asset("js/saveSvgAsPng.js", "save-svg-as-png@1.4.17", "lib/saveSvgAsPng.js"),
    Asset("css/react-resizable-styles.css", "react-resizable@1.4.6", "css/styles.css"),
    Asset("css/react-grid-layout-styles.css", "react-grid-layout@0.16.3", "css/styles.css"),
    Asset("fonts/classnames", "classnames@2.2.5", "index.js"),
    *(Asset(f"js/mathjax/2.7.5/{name}", "mathjax@2.7.5", name) for name in _MATHJAX_FILES),
)
"""Every asset visdom 0.2.4's page loads, with the npm package that holds it."""

VERSION_MARKER = "version.built"

_CHILD = Path(__file__).with_name("visdom_child.py")  # runs visdom's own download, by path


class AssetsError(RuntimeError):
    """The dashboard assets are missing and could not be installed."""


def _visdom_package_dir() -> Path:
    spec = importlib.util.find_spec("visdom")
    if spec is None or not spec.submodule_search_locations:
        raise AssetsError(
            "visdom is not installed in this Python environment; install monitor's requirements first"
        )
    return Path(list(spec.submodule_search_locations)[0])


def visdom_static_dir() -> Path:
    """The ``static/`` folder of the installed visdom package (found without importing visdom)."""
    return _visdom_package_dir() / "static"


def visdom_version() -> str:
    """The text of visdom's own VERSION file, which ``static/version.built`` must repeat."""
    return (_visdom_package_dir() / "VERSION").read_text().strip()


def missing_assets(static_dir: str | os.PathLike | None = None) -> list[str]:
    """Paths (relative to ``static_dir``) still to install; ``version.built`` is listed when stale.

    ``static_dir`` defaults to visdom's own; an empty list means the dashboard is complete.
    """
    static = Path(static_dir) if static_dir is not None else visdom_static_dir()
    missing = [a.path for a in ASSETS if not (static / a.path).is_file() or (static / a.path).stat().st_size == 0]
    marker = static / VERSION_MARKER
    if not marker.is_file() or marker.read_text().strip() != visdom_version():
        missing.append(VERSION_MARKER)
    return missing


def ensure_assets(
    static_dir: str | os.PathLike | None = None,
    *,
    visdom_download: bool = True,
    npm: str = "npm",
    timeout: float = 300.0,
) -> list[str]:
    """Install whatever :func:`missing_assets` reports and mark the folder built.

    Tries visdom's own download first (``visdom_download``; it needs the public CDNs and is only
    used when ``static_dir`` is named ``static``), then ``npm pack`` for what is still missing.
    Returns the paths that were missing. Raises :class:`AssetsError` when files remain missing.
    """
    static = Path(static_dir) if static_dir is not None else visdom_static_dir()
    missing = missing_assets(static)
    if not missing:
        return []
    _check_writable(static)
    _log.info("Installing %d dashboard asset(s) into %s", len(missing), static)
    files = [p for p in missing if p != VERSION_MARKER]
    tried_visdom = bool(files) and visdom_download and static.name == "static"
    if tried_visdom:
        _run_visdom_download(static, timeout=min(timeout, 90.0))
        files = [p for p in missing_assets(static) if p != VERSION_MARKER]
    if files:
        _install_from_npm(static, files, npm=npm, timeout=timeout, tried_visdom=tried_visdom)
    _write(static / VERSION_MARKER, visdom_version().encode())
    still = missing_assets(static)
    if still:
        raise AssetsError(f"dashboard assets still missing in {static} after installing: {', '.join(still)}")
    _log.info("Dashboard assets are complete in %s", static)
    return missing


def _check_writable(static: Path) -> None:
    try:
        static.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=static):
            pass
    except OSError as exc:
        raise AssetsError(
            f"static_dir must be a writable folder to install the dashboard assets, got {static} ({exc.strerror})"
        ) from None


def _run_visdom_download(static: Path, *, timeout: float) -> None:
    _log.info("Trying visdom's own download (needs internet access to its CDNs)...")
    try:
        subprocess.run(
            [sys.executable, str(_CHILD), "download", str(static.parent)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        _log.info("visdom's download did not finish in %.0f s", timeout)


def _install_from_npm(static: Path, files: list[str], *, npm: str, timeout: float, tried_visdom: bool) -> None:
    wanted = [a for a in ASSETS if a.path in files]
    npm_path = shutil.which(npm)
    if npm_path is None:
        visdom_failed = (
            "visdom's own download did not get them (no internet access to its CDNs?) and " if tried_visdom else ""
        )
        raise AssetsError(
            f"{len(wanted)} dashboard asset(s) missing in {static} (e.g. {wanted[0].path}); {visdom_failed}"
            f"`{npm}` is not on PATH. Install Node.js with npm (Debian: apt-get install npm) and run "
            "`monitor assets` again."
        )
    packages = sorted({a.package for a in wanted})
    _log.info("Fetching %s with npm pack", ", ".join(packages))
    with tempfile.TemporaryDirectory(prefix="monitor-assets-") as tmp:
        try:
            result = subprocess.run(
                [npm_path, "pack", "--silent", *packages],
                cwd=tmp,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            raise AssetsError(
                f"`npm pack` did not finish in {timeout:.0f} s; check npm's registry access"
            ) from None
        if result.returncode != 0:
            tail = (result.stderr or result.stdout).strip().splitlines()[-5:]
            raise AssetsError(
                f"`npm pack {' '.join(packages)}` failed (exit {result.returncode}): " + " | ".join(tail)
            )
        for asset in wanted:
            name, _, version = asset.package.rpartition("@")
            tarball = Path(tmp) / f"{name.lstrip('@').replace('/', '-')}-{version}.tgz"
            with tarfile.open(tarball) as archive:
                member = archive.extractfile(f"package/{asset.member}")
                if member is None:
                    raise AssetsError(f"{asset.package} has no file {asset.member}")
                _write(static / asset.path, member.read())


def _write(target: Path, data: bytes) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(target, lambda file: file.write(data))
