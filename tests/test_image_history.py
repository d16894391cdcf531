"""Images over time: a bounded store of grids beside the run log, and a pane to step through them."""
from __future__ import annotations

import base64

import torch

from helpers.monitors import grid_taken, shown_grid, unpadded
from monitor import Images, Monitor, VisdomSink
from monitor.imagestore import KEEP, ImageStore, kept
from monitor.replay import replay
from monitor.runlog import RunLog
from monitor.windows import PANE_GRIDS


def test_the_kept_grids_are_evenly_spread_and_always_include_the_latest():
    assert kept(list(range(1, 11))) == list(range(1, 11))  # up to KEEP, every one
    for latest in (17, 100, 2000, 2001):
        stays = kept(list(range(1, latest + 1)))
        assert len(stays) <= KEEP + 1 and stays[-1] == latest
        stride = stays[1] - stays[0]
        assert stays[:-1] == list(range(stride, latest + 1, stride))[:len(stays) - 1]  # even steps


def test_the_store_keeps_a_bounded_number_of_files_and_a_resume_removes_those_it_cut_off(tmp_path):
    store = ImageStore(tmp_path, run_id="r1")
    for _ in range(500):
        n, file = store.add("inputs/train", b"\x89PNG" + bytes(100))
    files = sorted((tmp_path / file).parent.glob("*.png"))
    assert [int(p.stem) for p in files] == kept(list(range(1, 501)))
    assert file.startswith("images/r1/inputs_train-") and (tmp_path / file).exists()  # a safe folder name

    resumed = ImageStore(tmp_path, run_id="r1")
    resumed.restore({"inputs/train": 300})  # the checkpoint's part of the log holds 300 grids
    assert max(int(p.stem) for p in (tmp_path / file).parent.glob("*.png")) <= 300
    assert resumed.add("inputs/train", b"\x89PNG")[0] == 301


def test_100k_steps_of_grids_stay_within_a_fixed_size_and_the_pane_ends_at_the_latest(
        visdom_server, read_window_raw, tmp_path):
    run_dir = tmp_path / "long"
    sizes = []
    with Monitor([Images(every=50, count=2, captions=None)], env="image-history", port=visdom_server.port,
                 run_dir=run_dir, raise_errors=True) as monitor:
        for step in range(1, 100_001):
            if (step - 1) % 50 == 0:  # Images(every=50) logs steps 1, 51, 101, ...
                grid_taken(monitor)  # steps this fast would skip grids the sink is behind on
                monitor.step_end(inputs=torch.full((2, 1, 8, 8), (step // 50 % 256) / 255.0))
            else:
                monitor.state.step += 1  # a step that logs nothing: only the step count matters here
            if step % 25_000 == 0:
                assert monitor.flush(timeout=30)
                images = sum(p.stat().st_size for p in (run_dir / "images").rglob("*.png"))
                sizes.append((images, (run_dir / RunLog.FILENAME).stat().st_size))
                pane = read_window_raw(visdom_server, "image-history", "inputs")
                files = sorted((run_dir / "images").rglob("*.png"))
                assert len(files) <= KEEP + 1 and len(pane["content"]) <= PANE_GRIDS
                assert _in_order(grids_of(files), grids_of(pane))  # every kept grid, maybe some thinned out since
                assert pane["selected"] == len(pane["content"]) - 1  # the latest is the one shown
                assert shown_grid(pane) == files[-1].read_bytes()
                assert [int(p.stem) for p in files] == kept(list(range(1, step // 50 + 1)))  # 500 grids every 25k steps
    grid_size = max(p.stat().st_size for p in (run_dir / "images").rglob("*.png"))
    for images, log in sizes:
        assert images <= (KEEP + 1) * grid_size  # the store: bounded, whatever the run's length
        assert log <= 2000 * 150  # the log: a line of about 100 bytes per grid, no pixels
    entries = [e for e in RunLog.read(run_dir / RunLog.FILENAME) if e.get("k") == "image"]
    assert len(entries) == 2000 and entries[-1]["x"] == 99_951

    replay(run_dir / RunLog.FILENAME, "image-history-replayed", port=visdom_server.port)
    replayed = read_window_raw(visdom_server, "image-history-replayed", "inputs")
    assert grids_of(replayed) == grids_of(sorted((run_dir / "images").rglob("*.png")))  # the kept ones, exactly
    assert _in_order(grids_of(replayed), grids_of(read_window_raw(visdom_server, "image-history", "inputs")))


def test_the_pane_grows_by_appends_and_is_created_again_only_past_its_bound(visdom_server, read_window_raw, tmp_path):
    # Every grid after the KEEP-th thins the store; creating the pane again for each (a close, a
    # second's wait for the page's answer, a new pane) made it vanish once a grid, and close() wait 2 s.
    sink = VisdomSink("history-appends", port=visdom_server.port, run_dir=tmp_path)  # here: its requests are counted
    with Monitor([Images(every=1, count=1, captions=None)], sink=sink, raise_errors=True) as monitor:
        posted = []
        post = monitor.sink.connection.post
        monitor.sink.connection.post = lambda endpoint, *rest, **options: (posted.append(endpoint),
                                                                           post(endpoint, *rest, **options))[1]
        for grid in range(1, PANE_GRIDS + 1):
            monitor.step_end(inputs=torch.full((1, 1, 4, 4), grid / 255))
            assert monitor.flush(timeout=10)
        pane = read_window_raw(visdom_server, "history-appends", "inputs")
        assert "close" not in posted and len(pane["content"]) == PANE_GRIDS  # one append a grid
        assert shown_grid(pane)[-1] != 0 and pane["selected"] == PANE_GRIDS - 1

        monitor.step_end(inputs=torch.rand(1, 1, 4, 4))  # one more than the pane may hold
        assert monitor.flush(timeout=10)
        pane = read_window_raw(visdom_server, "history-appends", "inputs")
        files = sorted((tmp_path / "images").rglob("*.png"))
        assert posted.count("close") == 1 and grids_of(pane) == grids_of(files)  # created again: the kept ones
        assert [int(p.stem) for p in files] == kept(list(range(1, PANE_GRIDS + 2)))


def grids_of(pane_or_files) -> list[bytes]:
    """The PNGs of a history pane read back from the server, or of image files, in order."""
    if isinstance(pane_or_files, dict):
        return [unpadded(base64.b64decode(c["src"].split(",", 1)[1])) for c in pane_or_files["content"]]
    return [path.read_bytes() for path in pane_or_files]


def _in_order(part: list, whole: list) -> bool:
    """Whether ``part`` is ``whole`` with some items left out, ending with its last."""
    rest = iter(whole)
    return bool(part) and part[-1] == whole[-1] and all(item in rest for item in part)


def test_a_server_that_lost_the_env_gets_the_whole_history_again(fresh_server, read_window_raw, tmp_path):
    with Monitor([Images(every=1, count=1, captions=None)], env="history-lost", port=fresh_server.port,
                 run_dir=tmp_path, raise_errors=True) as monitor:
        for step in range(1, 6):
            grid_taken(monitor)
            monitor.step_end(inputs=torch.rand(1, 1, 4, 4))
        assert monitor.flush(timeout=10)
        before = read_window_raw(fresh_server, "history-lost", "inputs")["content"]
        fresh_server.kill()  # the env is gone with it: it was never saved
        fresh_server.start()  # same port
        monitor.step_end(inputs=torch.rand(1, 1, 4, 4))
        assert monitor.flush(timeout=20)
        after = read_window_raw(fresh_server, "history-lost", "inputs")["content"]
    assert len(before) == 5 and len(after) == 6 and after[:5] == before  # no grid twice, none missing


def test_a_pane_closed_on_the_page_comes_back_with_the_next_grid(visdom_server, read_window_raw, connect_client,
                                                                 tmp_path):
    with Monitor([Images(every=1, count=1, captions=None)], env="history-closed", port=visdom_server.port,
                 run_dir=tmp_path, raise_errors=True) as monitor:
        for _ in range(3):
            monitor.step_end(inputs=torch.rand(1, 1, 4, 4))
        assert monitor.flush(timeout=10)
        connect_client(visdom_server).close(win="inputs", env="history-closed")  # the pane's X
        monitor.step_end(inputs=torch.rand(1, 1, 4, 4))  # appended to a pane the server no longer has
        assert monitor.flush(timeout=10)
        pane = read_window_raw(visdom_server, "history-closed", "inputs")
        assert grids_of(pane) == grids_of(sorted((tmp_path / "images").rglob("*.png")))  # all four, at once


def test_a_script_resumed_from_its_own_checkpoint_takes_the_grids_after_it_off_the_pane(
        visdom_server, read_window_raw, tmp_path, caplog):
    """A TensorBoard-style script requeued from its own torch.save at step 40 logs steps 40 and 50
    again: the killed run's grids there were shown beside the new ones, the slider going back."""
    from monitor import SummaryWriter

    run_dir = tmp_path / "runs" / "ddpm"
    for start, stop in ((0, 60), (40, 100)):  # killed after step 50, resumed from its step-40 checkpoint
        with SummaryWriter(run_dir, port=visdom_server.port) as writer:
            writer.flush()  # the resumed run's pane holds the killed run's grids before it goes back
            for step in range(start, stop, 10):
                writer.add_images("samples", torch.full((2, 1, 4, 4), step / 100), step)
    store = sorted((run_dir / "images").rglob("*.png"))
    expected = [path.read_bytes() for path in store[:4] + store[6:]]  # steps 0-30, then 40-90 of the resumed run
    assert len(store) == 12 and grids_of(read_window_raw(visdom_server, "ddpm", "samples")) == expected
    assert any("'samples' (x=40, after x=50)" in r.getMessage() and "image grids go on from there" in r.getMessage()
               for r in caplog.records)
    replay(run_dir / RunLog.FILENAME, "ddpm-replayed", port=visdom_server.port)
    assert grids_of(read_window_raw(visdom_server, "ddpm-replayed", "samples")) == expected
