"""Visdom's server and its asset download, run as a child process by path (never imported).

    python monitor/visdom_child.py serve -port 8097 -env_path ~/.monitor/visdom -bind_local
    python monitor/visdom_child.py download PACKAGE_DIR

Run by its path, the file imports nothing of monitor (whose package would load torch's names)
and blocks torch itself: visdom never uses it, and importing it costs 1-3 s per start.

``serve`` runs visdom's argument parser and server without the CDN download its own entry point
does on every start. It turns off tornado's autoreload, which visdom leaves on in debug mode and
which re-executes the process (losing every unsaved env) when an imported module's file changes,
e.g. during a pip install. The server runs in its own session, so Ctrl-C reaches only its parent;
a thread ends it once that parent is gone, even a parent SIGKILLed before it could stop it (the
port would stay taken). The parent's pid comes in ``$MONITOR_SERVER_PARENT``.

``download`` runs visdom's own asset download with every request bounded, since offline it may
hang or fail half-way.
"""
import os
import signal
import socket
import sys
import threading
import time

sys.modules["torch"] = None  # visdom imports torch only if it can; it never needs it here


def serve(arguments: list) -> None:
    parent = int(os.environ.pop("MONITOR_SERVER_PARENT"))
    threading.Thread(target=_end_with, args=(parent,), daemon=True).start()
    from visdom.server import app
    from visdom.server.run_server import main

    app.tornado_settings["autoreload"] = False
    sys.argv = [sys.argv[0], *arguments]
    main()


def download(package_dir: str) -> None:
    socket.setdefaulttimeout(10)
    from visdom.server.build import download_scripts

    download_scripts(install_dir=package_dir)


def _end_with(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(0.5)
    os.kill(os.getpid(), signal.SIGTERM)


if __name__ == "__main__":
    command, *rest = sys.argv[1:]
    if command == "serve":
        serve(rest)
    else:
        download(*rest)
