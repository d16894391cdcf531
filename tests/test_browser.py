"""The dashboard that ``monitor serve`` and ``monitor demo`` serve, rendered by headless Chromium
(Debian's chromium and chromium-driver; ``make test`` installs them). Nothing here needs internet access.

The README's screenshot comes from the demo test: ``DEMO_SCREENSHOT=docs/dashboard.png pytest
tests/test_browser.py -k demo`` runs the demo at full length and saves it there.
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from helpers.commands import DemoCommand

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"
ENV = "browser_check"

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()),
    reason="chromium and chromedriver are not installed (`make browser` installs them)",
)]


def _screenshot_without_console_errors(browser, name: str) -> None:
    """Saves the page as artifacts/NAME and checks its console logged no error."""
    ARTIFACTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / name))
    severe = [entry["message"] for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert severe == [], "console errors:\n" + "\n".join(severe)


@pytest.fixture
def browser() -> Iterator[object]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    with tempfile.TemporaryDirectory(prefix="monitor-chromium-") as profile:
        # WebGL (an embedding's 3-D scatter) in software: there is no GPU here.
        for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--enable-unsafe-swiftshader", "--disable-quic",
                     "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
                     "--window-size=1280,900", f"--user-data-dir={profile}"):
            options.add_argument(flag)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
        try:
            yield driver
        finally:
            driver.quit()


@pytest.mark.parametrize("base_url", ["", "/visdom"])  # the second: served under a proxy's path
def test_served_dashboard_renders_a_plot_and_an_image(monitor_serve, tmp_path: Path, browser, base_url) -> None:
    from urllib.parse import urlparse

    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    from visdom import Visdom

    command = monitor_serve("--port", "0", "--env-path", str(tmp_path), *(["--base-url", base_url] if base_url else []))
    url = command.url()
    assert urlparse(url).path == base_url
    client = Visdom(server="http://127.0.0.1", port=urlparse(url).port, base_url=base_url, use_incoming_socket=False,
                    raise_exceptions=True)
    steps = np.arange(50)
    client.line(X=steps, Y=np.exp(-steps / 20), win="loss", env=ENV, opts={"title": "loss", "legend": ["train"]})
    ramp = np.linspace(0, 1, 64)
    client.image(np.stack([np.outer(ramp, ramp), np.outer(ramp[::-1], ramp), np.ones((64, 64)) * 0.5]),
                 win="sample", env=ENV, opts={"caption": "sample"})

    browser.get(f"{url}/env/{ENV}")
    wait = WebDriverWait(browser, 20)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "svg.main-svg"))
    wait.until(lambda d: d.execute_script(
        "const img = document.querySelector('img.content-image'); return img && img.complete && img.naturalWidth > 0;"
    ))
    assert browser.find_elements(By.CSS_SELECTOR, "svg.main-svg path.js-line")  # the trace was drawn

    ARTIFACTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / f"dashboard{base_url.replace('/', '-')}.png"))
    severe = [entry["message"] for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert severe == [], "console errors (missing assets?):\n" + "\n".join(severe)

    code, stderr = command.finish(signal.SIGINT)
    assert code == 0, stderr


def test_the_demo_dashboard_shows_its_line_plots_and_the_image_grid(tmp_path: Path, browser) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    screenshot = os.environ.get("DEMO_SCREENSHOT")  # the README's picture: the demo at full length
    short = () if screenshot else ("--samples", "640", "--epochs", "2")
    demo = DemoCommand("--port", "0", "--env-path", str(tmp_path / "envs"), *short, cwd=tmp_path)
    try:
        url = demo.url()
        demo.wait_for("until Ctrl-C", timeout=300)
        browser.set_window_size(1500, 1000)
        browser.get(url)
        wait = WebDriverWait(browser, 30)
        # loss (train, validation), accuracy (same), learning rate (lr), grad norm (4 layers, total)
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "svg.main-svg g.trace path.js-line")) >= 10)
        wait.until(lambda d: d.execute_script(
            "const img = document.querySelector('img.content-image'); return img && img.complete && img.naturalWidth > 0;"
        ))
        titles = {e.text for e in browser.find_elements(By.CSS_SELECTOR, ".window .bar div.pull-right")}
        assert {"loss", "accuracy", "learning rate", "grad norm", "inputs", "summary"} <= titles, titles
        assert "Sequential" in browser.find_element(By.TAG_NAME, "body").text  # the summary pane

        ARTIFACTS.mkdir(exist_ok=True)
        browser.save_screenshot(str(ARTIFACTS / "demo-dashboard.png"))
        if screenshot:
            browser.save_screenshot(screenshot)
        severe = [entry["message"] for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
        assert severe == [], "console errors:\n" + "\n".join(severe)
        code, stderr = demo.finish(signal.SIGINT)
    finally:
        demo.kill()
    assert code == 0, stderr


def test_the_compare_view_overlays_two_runs_in_one_loss_window_even_with_a_nan(visdom_server, tmp_path, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from monitor.log import Log
    from monitor.sink import VisdomSink

    for env, nan_at in (("compare_a", None), ("compare_b", 3)):
        sink = VisdomSink(env, port=visdom_server.port, run_dir=tmp_path / env, flush_every=0.05)
        log = Log(sink)
        for step in range(1, 11):
            log.scalar("loss", "train", step, float("nan") if step == nan_at else 1.0 / step)
        assert sink.close(timeout=10)

    browser.get(f"{visdom_server.url}/compare/compare_a+compare_b")
    legend = "svg.main-svg g.legend text.legendtext"
    WebDriverWait(browser, 30).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, legend)) >= 2)
    titles = [e.text for e in browser.find_elements(By.CSS_SELECTOR, ".window .bar div.pull-right")]
    names = sorted(e.text for e in browser.find_elements(By.CSS_SELECTOR, legend))
    ARTIFACTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "compare.png"))
    assert "loss" in titles and names == ["0_train", "1_train"]  # both runs' traces, one window


def test_a_server_killed_and_started_again_with_runs_shows_the_finished_run(fresh_server, monitor_serve, tmp_path,
                                                                             browser):
    import subprocess
    import sys
    import time

    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    quick_start = Path(__file__).parent / "helpers" / "quick_start.py"
    subprocess.run([sys.executable, str(quick_start), "--env", "outlived", "--port", str(fresh_server.port),
                    "--run-dir", str(tmp_path / "runs" / "outlived")], check=True, capture_output=True, timeout=120)
    port = fresh_server.port
    fresh_server.kill()
    serving = monitor_serve("--port", str(port), "--env-path", str(tmp_path / "envs"), "--runs", str(tmp_path / "runs"))
    url = serving.url()
    deadline = time.monotonic() + 60
    while not any("Rebuilt" in line for line in serving.lines):
        assert time.monotonic() < deadline, serving.lines
        time.sleep(0.05)

    browser.get(f"{url}/env/outlived")
    titles = ".window .bar div.pull-right"
    WebDriverWait(browser, 30).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "svg.main-svg")) >= 3)
    shown = {e.text for e in browser.find_elements(By.CSS_SELECTOR, titles)}
    assert {"summary", "loss", "learning rate", "grad norm"} <= shown, shown


def test_the_image_history_pane_steps_through_the_kept_grids(visdom_server, tmp_path, browser):
    import base64

    import torch
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.support.ui import WebDriverWait

    from helpers.monitors import grid_taken
    from monitor import Images, Monitor
    from monitor.windows import PANE_GRIDS, on_slider_pane

    monitor = Monitor([Images(every=1, count=1, captions=None)], env="history_check", port=visdom_server.port,
                      run_dir=tmp_path, raise_errors=True)
    for step in range(1, 41):  # 40 grids: 10 kept (every 4th, the latest among them)
        grid_taken(monitor)  # a grid each step, not one skipped for the sink
        monitor.step_end(inputs=torch.full((1, 1, 16, 16), step / 80))
    assert monitor.flush(timeout=10)

    def sources() -> list[str]:
        files = sorted(tmp_path.joinpath("images").rglob("*.png"))
        return ["data:image/png;base64," + base64.b64encode(on_slider_pane(p.read_bytes())).decode() for p in files]

    browser.get(f"{visdom_server.url}/env/history_check")
    wait = WebDriverWait(browser, 30)
    shown = "return document.querySelector('img.content-image') && document.querySelector('img.content-image').src"
    kept = sources()
    wait.until(lambda d: d.execute_script(shown) == kept[-1])  # opens at the latest grid
    slider = browser.find_element(By.CSS_SELECTOR, "input[type=range]")
    assert int(slider.get_attribute("max")) == len(kept) - 1
    drawn = "const i = document.querySelector('img.content-image'); return i.complete && i.naturalWidth > 0"
    wait.until(lambda d: d.execute_script(drawn))
    image = browser.find_element(By.CSS_SELECTOR, "img.content-image").rect
    assert image["y"] + image["height"] <= slider.rect["y"]  # the grid's last row above the slider, not under it
    width = slider.size["width"]  # the pane takes keys for itself: the slider is clicked, as a person would
    ActionChains(browser).move_to_element_with_offset(slider, -width // 2 + 1, 0).click().perform()
    wait.until(lambda d: d.execute_script(shown) == kept[0])  # the earliest kept grid
    ActionChains(browser).move_to_element_with_offset(slider, width // 2 - 1, 0).click().perform()
    wait.until(lambda d: d.execute_script(shown) == kept[-1])

    for step in range(41, 41 + PANE_GRIDS - len(kept)):  # appended one at a time, up to the pane's bound
        monitor.step_end(inputs=torch.full((1, 1, 16, 16), step / 80))
        assert monitor.flush(timeout=10)
    assert monitor.close(timeout=10)
    latest = sources()[-1]
    wait.until(lambda d: d.execute_script(shown) == latest)
    assert int(browser.find_element(By.CSS_SELECTOR, "input[type=range]").get_attribute("max")) == PANE_GRIDS - 1
    severe = [entry["message"] for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert severe == [], "console errors:\n" + "\n".join(severe)
    ARTIFACTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "image-history.png"))


@pytest.mark.xfail(strict=False, reason="known: Visdom's page can keep a slider place past the end of a history "
                                        "pane made again with fewer grids, and fails reading it (TypeError: "
                                        "reading 'caption'); seen in about half the runs")
def test_a_history_pane_made_again_while_the_page_looks_at_it_still_shows(visdom_server, tmp_path, browser):
    import torch
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.support.ui import WebDriverWait

    from monitor import Images, Monitor
    from monitor.windows import PANE_GRIDS

    monitor = Monitor([Images(every=1, count=1, captions=None)], env="history_remade", port=visdom_server.port,
                      run_dir=tmp_path, raise_errors=True)
    monitor.step_end(inputs=torch.rand(1, 1, 16, 16))
    assert monitor.flush(timeout=10)
    browser.get(f"{visdom_server.url}/env/history_remade")
    wait = WebDriverWait(browser, 30)
    slider = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "input[type=range]"))[0]
    ActionChains(browser).move_to_element_with_offset(slider, -slider.size["width"] // 2 + 1, 0).click().perform()
    for _ in range(PANE_GRIDS):  # one more than the pane may hold: it is made again, with the kept grids only
        monitor.step_end(inputs=torch.rand(1, 1, 16, 16))
        assert monitor.flush(timeout=10)
    assert monitor.close(timeout=10)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "input[type=range]"))
    assert int(browser.find_element(By.CSS_SELECTOR, "input[type=range]").get_attribute("max")) == \
        len(list(tmp_path.joinpath("images").rglob("*.png"))) - 1
    severe = [entry["message"] for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert severe == [], "console errors:\n" + "\n".join(severe)


def test_a_deep_model_s_grad_norms_show_as_a_heatmap_with_layer_names_and_a_log_colour_scale(
        visdom_server, tmp_path, browser):
    import torch
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    from torch import nn

    from monitor import GradNorms, Monitor

    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Sequential(nn.Linear(8, 8), nn.Tanh()) for _ in range(30)], nn.Linear(8, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(4, 8), torch.randint(0, 3, (4,))
    with Monitor([GradNorms()], env="heatmap_check", port=visdom_server.port, run_dir=tmp_path,
                 raise_errors=True) as monitor:
        monitor.train_start(model, optimizer)
        for _ in range(50):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            monitor.after_backward()
            optimizer.step()
            monitor.step_end()
        assert monitor.flush(timeout=10)

    browser.get(f"{visdom_server.url}/env/heatmap_check")
    wait = WebDriverWait(browser, 30)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "svg.main-svg g.hm image"))  # the heatmap drawn
    ticks = {e.text for e in browser.find_elements(By.CSS_SELECTOR, "svg.main-svg g.y2tick text")}
    assert {"0.0.Linear", "30.Linear"} & ticks, ticks  # layer names on its axis
    colour_ticks = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "svg.main-svg g.cbaxis text")]
    assert colour_ticks and all(t.startswith("1e") for t in colour_ticks), colour_ticks  # a log colour scale
    legend = {e.text for e in browser.find_elements(By.CSS_SELECTOR, "svg.main-svg g.legend text.legendtext")}
    assert "total" in legend and len(legend) == 6, legend  # total and the 5 largest layers as curves
    _screenshot_without_console_errors(browser, "heatmap.png")


def test_distributions_show_percentile_bands_over_the_steps_and_the_latest_histogram(visdom_server, tmp_path,
                                                                                     browser):
    import torch
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from monitor import SummaryWriter

    with SummaryWriter(log_dir=tmp_path / "distribution_check", port=visdom_server.port) as writer:
        for step in range(40):
            writer.add_histogram("weights", torch.randn(2000) * (1 + step / 10), step)
            writer.add_scalar("Loss/train", 1 / (step + 1), step)
        writer.flush()

    browser.get(f"{visdom_server.url}/env/distribution_check")
    wait = WebDriverWait(browser, 30)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "svg.main-svg g.barlayer path"))  # the latest histogram
    fills = browser.find_elements(By.CSS_SELECTOR, "svg.main-svg g.scatterlayer path.js-fill")
    assert len(fills) >= 8, len(fills)  # the bands between the nine percentiles
    axis_titles = {e.text for e in browser.find_elements(By.CSS_SELECTOR, "svg.main-svg text.x2title")}
    assert "latest histogram, step 39" in axis_titles, axis_titles
    _screenshot_without_console_errors(browser, "distribution.png")


def test_curves_are_smoothed_as_in_tensorboard_and_visdom_s_own_smoothing_slider_works_on_every_pane(
        visdom_server, tmp_path, browser):
    import time

    import torch
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    from monitor import SummaryWriter

    noise = torch.Generator().manual_seed(0)
    with SummaryWriter(log_dir=tmp_path / "smoothing_check", port=visdom_server.port) as writer:
        for step in range(60):
            writer.add_scalar("Loss/train", 1 / (step + 1) + 0.1 * torch.rand(1, generator=noise).item(), step)
            writer.add_histogram("weights", torch.randn(500, generator=noise), step)
            labels = torch.randint(0, 2, (100,), generator=noise)
            writer.add_pr_curve("pr", labels, torch.rand(100, generator=noise) * 0.5 + labels * 0.5, step)
        writer.flush()

    browser.get(f"{visdom_server.url}/env/smoothing_check")
    wait = WebDriverWait(browser, 30)
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "svg.main-svg")) >= 3)
    legend = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "g.legend text.legendtext")]
    assert legend.count("train") == 1  # the smoothed curve in the legend, the values faint behind it
    panes = len(browser.find_elements(By.CSS_SELECTOR, "svg.main-svg"))
    for i in range(len(browser.find_elements(By.CSS_SELECTOR, "button[title='smooth lines']"))):
        browser.find_elements(By.CSS_SELECTOR, "button[title='smooth lines']")[i].click()
        for _ in range(3):  # the widget is drawn again at each step of its slider
            browser.find_elements(By.CSS_SELECTOR, "input[type=range]")[-1].send_keys(Keys.ARROW_RIGHT)
            time.sleep(0.2)
    assert len(browser.find_elements(By.CSS_SELECTOR, "svg.main-svg")) == panes  # the page still draws them all
    _screenshot_without_console_errors(browser, "smoothing.png")


def test_a_video_plays_in_its_pane_a_sound_has_a_player_and_a_mesh_is_drawn_in_3d(visdom_server, tmp_path, browser):
    import time

    import torch
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from monitor import SummaryWriter

    frames = torch.zeros(1, 2, 3, 48, 48)  # a black frame, then a white one, at 4 frames a second
    frames[:, 1] = 1
    with SummaryWriter(log_dir=tmp_path / "media_check", port=visdom_server.port) as writer:
        writer.add_video("rollout", frames, 0, fps=4)
        writer.add_audio("voice", torch.sin(torch.arange(8000) / 3), 0, sample_rate=8000)
        writer.add_mesh("shape", torch.tensor([[[1.0, 1, 1], [-1, -1, 1], [1, -1, -1], [-1, 1, -1]]]),
                        faces=torch.tensor([[[0, 1, 2], [0, 3, 1], [0, 2, 3], [1, 3, 2]]]))
        writer.flush()

    browser.get(f"{visdom_server.url}/env/media_check")
    wait = WebDriverWait(browser, 30)
    image = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "img[src^='data:image/png']"))[0]
    wait.until(lambda d: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", image))
    shots = set()
    for _ in range(8):  # two seconds: both frames, if it plays
        shots.add(image.screenshot_as_png)
        time.sleep(0.25)
    assert len(shots) >= 2, "the video's pane shows one still image"
    seconds = wait.until(lambda d: d.execute_script(
        "const a = document.querySelector('audio'); return a && a.readyState >= 1 && a.duration"))
    assert seconds == pytest.approx(1.0, abs=0.01)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "div.gl-container canvas"))  # WebGL drew the mesh
    _screenshot_without_console_errors(browser, "media.png")


def test_pr_curves_show_the_latest_steps_with_recall_and_precision_axes(visdom_server, tmp_path, browser):
    import torch
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from monitor import SummaryWriter

    g = torch.Generator().manual_seed(0)
    with SummaryWriter(log_dir=tmp_path / "pr_check", port=visdom_server.port) as writer:
        for step in range(8):  # a classifier getting better: positives drawn further from negatives
            labels = torch.randint(0, 2, (400,), generator=g)
            writer.add_pr_curve("pr/cat", labels, torch.rand(400, generator=g) * 0.6 + labels * step / 20, step)
        writer.flush()

    browser.get(f"{visdom_server.url}/env/pr_check")
    wait = WebDriverWait(browser, 30)
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "svg.main-svg g.scatterlayer g.trace")) == 5)
    legend = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "svg.main-svg g.legend text.legendtext")]
    assert legend == [f"step {step}" for step in range(3, 8)], legend
    titles = {e.text for e in browser.find_elements(By.CSS_SELECTOR, "svg.main-svg text.xtitle, svg.main-svg text.ytitle")}
    assert {"recall", "precision"} <= titles, titles
    _screenshot_without_console_errors(browser, "pr_curve.png")


def test_an_embedding_shows_as_a_3d_scatter_coloured_by_label(visdom_server, tmp_path, browser):
    import torch
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from monitor import SummaryWriter

    g = torch.Generator().manual_seed(0)
    with SummaryWriter(log_dir=tmp_path / "embedding_check", port=visdom_server.port) as writer:
        vectors = torch.randn(300, 8, generator=g) + (torch.arange(300) % 3)[:, None] * 2.0
        writer.add_embedding(vectors, metadata=[["cat", "dog", "bird"][i % 3] for i in range(300)])
        writer.flush()

    browser.get(f"{visdom_server.url}/env/embedding_check")
    wait = WebDriverWait(browser, 30)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "div.gl-container canvas"))  # WebGL drew the scene
    legend = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "svg.main-svg g.legend text.legendtext")]
    assert legend == ["bird", "cat", "dog"], legend  # in order, not as the points first had them
    notes = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "svg.main-svg g.annotation text")]
    assert notes == ["step 0: PCA of 300 vectors"], notes
    _screenshot_without_console_errors(browser, "embedding.png")


def test_the_graph_pane_draws_a_sequential_a_skip_connection_and_two_inputs(visdom_server, tmp_path, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from monitor import Monitor
    from monitor.callbacks.graph import show
    from monitor.graph import traced
    from helpers.graph_models import models_and_inputs

    expected = {}
    with Monitor([], env="graph_check", port=visdom_server.port, run_dir=tmp_path) as monitor:
        for name, model, inputs in models_and_inputs():
            show(monitor.log, model, inputs, window=f"graph {name}")
            nodes, _ = traced(model, inputs)
            expected[f"graph {name}"] = (len(nodes), {n.shape for n in nodes if n.shape})
        assert monitor.flush(timeout=10)

    browser.get(f"{visdom_server.url}/env/graph_check")
    wait = WebDriverWait(browser, 30)
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "div.react-grid-item svg g.node")) >=
               sum(count for count, _ in expected.values()))
    for pane in browser.find_elements(By.CSS_SELECTOR, "div.react-grid-item"):
        titles = pane.find_elements(By.CSS_SELECTOR, ".window .bar div.pull-right")
        title = titles[0].text.strip() if titles else ""
        if title not in expected:
            continue
        count, shapes = expected.pop(title)
        assert len(pane.find_elements(By.CSS_SELECTOR, "svg g.node")) == count
        drawn_shapes = {e.get_attribute("textContent") for e in pane.find_elements(By.CSS_SELECTOR, "svg text.shape")}
        assert drawn_shapes <= shapes and drawn_shapes, (title, drawn_shapes, shapes)
    assert not expected, f"panes not found: {sorted(expected)}"
    _screenshot_without_console_errors(browser, "graph.png")


def test_the_runs_pane_lists_each_run_and_its_link_opens_the_run(fresh_server, monitor_serve, tmp_path, browser):
    import time

    import torch
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from monitor import Monitor, Scalars

    for env in ("alpha", "beta"):
        with Monitor([Scalars()], env=env, port=fresh_server.port, run_dir=tmp_path / "runs" / env) as monitor:
            for step in range(5):
                monitor.step_end(loss=torch.tensor(1.0 / (step + 1)))
    port = fresh_server.port
    fresh_server.kill()
    serving = monitor_serve("--port", str(port), "--env-path", str(tmp_path / "envs"), "--runs", str(tmp_path / "runs"))
    url = serving.url()
    deadline = time.monotonic() + 60
    while not any("/env/runs" in line for line in serving.lines):
        assert time.monotonic() < deadline, serving.lines
        time.sleep(0.05)

    browser.get(f"{url}/env/runs")
    wait = WebDriverWait(browser, 30)
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "tr.run")) == 2)
    rows = {row.find_element(By.CSS_SELECTOR, "a").text: row.text for row in browser.find_elements(By.CSS_SELECTOR, "tr.run")}
    assert set(rows) == {"alpha", "beta"} and all("finished" in text for text in rows.values()), rows
    browser.find_element(By.LINK_TEXT, "alpha").click()
    wait.until(lambda d: d.current_url.endswith("/env/alpha"))
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "svg.main-svg"))  # the run's own loss pane
    titles = {e.text for e in browser.find_elements(By.CSS_SELECTOR, ".window .bar div.pull-right")}
    assert "loss" in titles, titles


def test_a_curve_of_one_point_shows_as_a_dot_until_it_has_two(visdom_server, tmp_path, browser, read_window_raw):
    """Plotly draws no line through one point: a first epoch's validation loss was an empty pane."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from monitor import Monitor, Scalars

    with Monitor([Scalars()], env="one_point", run_dir=tmp_path, port=visdom_server.port) as monitor:
        for step in range(3):
            monitor.step_end(loss=1.0 / (step + 1), metrics={"accuracy": 0.5, "lr": 0.001})
        monitor.validation_end({"loss": 0.8, "test accuracy": 0.9})
        monitor.flush()
        browser.get(f"{visdom_server.url}/env/one_point")
        panes = "svg.main-svg"
        WebDriverWait(browser, 30).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, panes)) >= 4)
        dots = "g.scatterlayer g.trace g.points path.point"
        # A dot for each one-point validation curve (drawn as it is, not smoothed): loss's and test accuracy's
        WebDriverWait(browser, 30).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, dots)) >= 2)
        modes = {name: {t["name"]: t["mode"] for t in read_window_raw(visdom_server, "one_point", name)["content"]["data"]}
                 for name in ("loss", "test accuracy")}
        ticks = [t.text for t in browser.find_elements(By.CSS_SELECTOR, "svg.main-svg g.ytick text")]
        assert "0.001" in ticks and "\u22121" not in ticks  # a constant 0.001 about its value, not on Plotly's -1 to 1
        _screenshot_without_console_errors(browser, "one_point.png")
        monitor.validation_end({"loss": 0.7})
    assert modes["test accuracy"] == {"validation": "lines+markers"}
    assert set(modes["loss"].values()) == {"lines", "lines+markers"}  # the train curve, the validation dot
    assert {t["name"]: t["mode"] for t in read_window_raw(visdom_server, "one_point", "loss")["content"]["data"]
            } == {"train": "lines", "validation": "lines"}


def test_a_curve_finite_only_at_a_few_steps_shows_a_dot_at_each_of_them(visdom_server, tmp_path, browser, read_window_raw):
    """An A2C loop's mean return of the episodes a rollout ended is NaN at most updates: its 14
    finite values, each between NaNs, were an empty pane (Plotly draws no line through one point)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from monitor import Monitor, Scalars

    with Monitor([Scalars()], env="sparse", run_dir=tmp_path, port=visdom_server.port) as monitor:
        for update in range(40):
            returns = [10.0 + update] if update % 3 == 0 else []
            monitor.step_end(metrics={"episode_return": np.mean(returns) if returns else math.nan,
                                      "entropy": math.nan if update in (10, 20) else 1.0 - update / 100})
        assert monitor.flush(timeout=10)
        browser.get(f"{visdom_server.url}/env/sparse")
        WebDriverWait(browser, 30).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "svg.main-svg")) >= 2)

        def dots(title: str) -> int:  # the markers drawn with a size, in the pane of that title
            pane = next(w for w in browser.find_elements(By.CSS_SELECTOR, ".window")
                        if w.find_element(By.CSS_SELECTOR, ".bar div.pull-right").text == title)
            return sum(1 for p in pane.find_elements(By.CSS_SELECTOR, "g.points path.point")
                       if p.get_attribute("d") not in (None, "", "M0,0Z"))

        WebDriverWait(browser, 30).until(lambda d: dots("episode_return") >= 2 * 14)  # the smoothed and the faint
        assert dots("entropy") == 0  # a NaN between points that have neighbours: a gap, no dots
        _screenshot_without_console_errors(browser, "sparse_curve.png")
    traces = read_window_raw(visdom_server, "sparse", "episode_return")["content"]["data"]
    assert [t["mode"] for t in traces] == ["lines+markers", "lines+markers"]
