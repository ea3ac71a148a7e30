"""The playground at `/` of `charlm serve`, driven in a real browser against a real server.

A tiny LSTM is trained with `charlm train`, served in-process by uvicorn, and the page is used
through Playwright and the system Chromium: the model is listed, text streams in and Stop ends
it, the surprise and inside-the-network views colour each character, a unit is picked from the
ranking, the training curve is drawn, and the page asks nothing of any host but the server.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import pytest

pytest.importorskip("playwright")
CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip(
        "no system Chromium at /usr/bin/chromium: apt-get install -y --no-install-recommends chromium fonts-liberation",
        allow_module_level=True,
    )

from helpers.server import running_server  # noqa: E402
from playwright.sync_api import expect, sync_playwright  # noqa: E402

from charlm.serve.settings import ServeSettings  # noqa: E402

WORDS = "the quick brown fox jumps over a lazy dog and then runs home to sleep".split()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A one-layer LSTM trained for 30 steps on a small text of words (a few seconds)."""
    folder = tmp_path_factory.mktemp("playground")
    corpus = folder / "words.txt"
    lines = (" ".join(WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(10)) for i in range(400))
    corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
    run = folder / "run"
    env = dict(os.environ, CHARLM_DATA_DIR=str(folder / "data"))
    env.pop("CHARLM_CACHE_DIR", None)
    command = [
        sys.executable, "-m", "charlm", "train", "--data", str(corpus), "--out", str(run), "--max-steps", "30",
        "--layers", "1", "--hidden", "32", "--seq-len", "32", "--batch-size", "8", "--sample-length", "0",
        "--threads", "1", "--device", "cpu", "--no-auto-size", "--log-every", "5", "--eval-every", "10",
    ]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return run


@pytest.fixture(scope="module")
def server_url(run_dir):
    """The real app on a free port of 127.0.0.1, served by uvicorn in a thread."""
    # a large max_tokens so a generation is still running when the test presses Stop
    with running_server({"tiny": run_dir}, ServeSettings(max_tokens=1_000_000)) as server:
        yield server.url


def output_length(page) -> int:
    return page.evaluate("document.querySelector('#output .gen').textContent.length")


def test_playground_in_a_browser(server_url, tmp_path):
    urls: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"],
        )
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.on("request", lambda request: urls.append(request.url))
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(server_url + "/")

            # the model is listed, with its shape
            expect(page.locator("#model option")).to_have_text(["tiny"])
            expect(page.locator("#model-info")).to_contain_text("lstm")
            expect(page.locator("#model-info")).to_contain_text("hidden 32")

            # generate: the text streams in, Stop ends it
            page.fill("#prompt", "the quick brown ")
            page.fill("#max-tokens", "1000000")
            page.fill("#seed", "7")
            page.click("#generate")
            expect(page.locator("#generate")).to_have_text("Stop")
            page.wait_for_function("document.querySelector('#output .gen').textContent.length > 5")
            first = output_length(page)
            page.wait_for_function(f"document.querySelector('#output .gen').textContent.length > {first}")
            expect(page.locator("#generate")).to_have_text("Stop")
            page.click("#generate")
            expect(page.locator("#generate")).to_have_text("Generate")
            expect(page.locator("#gen-stats")).to_contain_text("tokens/s")
            stopped = output_length(page)
            page.wait_for_timeout(400)
            assert output_length(page) == stopped
            assert page.locator("#output .prompt").text_content() == "the quick brown "

            # surprise: every character coloured, its figure on hover, bits per character shown
            page.click("#tab-surprise")
            expect(page.locator("#panel-surprise")).to_be_visible()
            text = "the lazy dog runs home\nto sleep"
            page.fill("#surprise-text", text)
            page.click("#analyse")
            expect(page.locator("#surprise-bpc")).to_contain_text("bits per character")
            coloured = page.eval_on_selector_all(
                "#surprise-view span",
                "els => els.filter(e => e.style.backgroundColor && /\\d\\.\\d+ bits/.test(e.title)).length",
            )
            assert coloured >= len(text) - 1  # the first character may be given without a score
            page.hover("#surprise-view span:nth-child(5)")
            expect(page.locator("#surprise-readout")).to_contain_text("bits")

            # inside the network: coloured by a unit; picking one from the ranking selects it
            page.click("#tab-inside")
            expect(page.locator("#inside-text")).to_have_value(text)
            page.click("#inspect")
            expect(page.locator("#most-active button").first).to_be_visible()
            spans = page.eval_on_selector_all(
                "#inside-view span", "els => els.filter(e => e.style.backgroundColor && /=/.test(e.title)).length"
            )
            assert spans == len(text)
            expect(page.locator("#state option")).to_have_text(["hidden", "cell"])
            before = page.input_value("#unit")
            choice = page.locator(f'#most-active button:not([data-unit="{before}"])').first
            picked = choice.get_attribute("data-unit")
            choice.click()
            expect(page.locator("#unit")).to_have_value(picked)
            expect(page.locator(f'#most-active button[data-unit="{picked}"]')).to_have_attribute("aria-pressed", "true")
            assert picked != before

            # the training curve: a path for the train loss, another for validation
            page.click("#tab-training")
            expect(page.locator("#curve svg path.train")).to_have_count(1)
            assert page.get_attribute("#curve svg path.train", "d").count("L") >= 3
            expect(page.locator("#curve svg path.val")).to_have_count(1)
            page.check("#x-time")
            expect(page.locator("#curve svg text", has_text="time (s)")).to_have_count(1)

            page.click("#tab-inside")
            shot = tmp_path / "playground.png"
            page.screenshot(path=shot, full_page=True)
            assert shot.stat().st_size > 10_000
            assert errors == []
        finally:
            browser.close()
    outside = [u for u in urls if urlparse(u).scheme not in ("data", "blob") and urlparse(u).hostname != "127.0.0.1"]
    assert outside == []
