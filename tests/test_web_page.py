"""The multi-turn synthesis page end to end in headless Chromium (Debian's `chromium` driven by
Playwright's Python package): three turns, code streaming in, edits that run in the sandbox,
a retry, an undo and the download of a program that runs. Skipped without Chromium/Playwright."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from generation_helpers import one_thread  # noqa: F401 (fixture)
from serving_helpers import MODEL_NAME, serve, tiny_model

sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (Python package only)")
CHROMIUM = os.environ.get("OPENCODEGEN_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
if not Path(CHROMIUM).is_file():
    pytest.skip("no chromium binary (apt-get install chromium)", allow_module_level=True)
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]  # fmt: skip
SCREENSHOT = "web-session.png"

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    model, tokenizer = tiny_model(tmp_path_factory.mktemp("tiny"), favour="value =")  # long turns
    with serve(model, tokenizer) as server, sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1100, "height": 900}, accept_downloads=True)
        page.set_default_timeout(30_000)
        page.goto(server.url + "/")
        yield page
        browser.close()


def turns(page):
    return page.locator("#turns > li.turn")


def run_turn(page, instruction: str) -> None:
    count = turns(page).count()
    page.fill("#instruction", instruction)
    page.click("#run")
    sync_api.expect(turns(page)).to_have_count(count + 1)
    sync_api.expect(page.locator("#turns > li.turn.pending")).to_have_count(0)  # the turn ran
    sync_api.expect(page.locator("#run")).to_be_enabled()


def edit_turn(page, index: int, code: str) -> None:
    card = turns(page).nth(index)
    card.locator("button.edit").click()
    card.locator("textarea.edit-code").fill(code)
    card.locator("button.save").click()
    sync_api.expect(turns(page).nth(index).locator("pre.code")).to_have_text(code)


def test_three_turns_undo_retry_edit_and_download(page, tmp_path):
    sync_api.expect(page.locator("#model")).to_contain_text(MODEL_NAME)
    sync_api.expect(page.locator("#undo")).to_be_disabled()  # nothing to undo yet
    # record every text the code box shows while a turn is written: streaming shows it grow
    page.evaluate("""() => {
        window.codeLengths = [];
        new MutationObserver(() => {
            const code = document.querySelector('#turns > li.pending pre.code');
            if (code) window.codeLengths.push(code.textContent.length);
        }).observe(document.querySelector('#turns'), {subtree: true, childList: true, characterData: true});
    }""")

    run_turn(page, "Assign the list [3, 1, 2] to a variable named xs.")
    lengths = page.evaluate("window.codeLengths")
    final = len(turns(page).nth(0).locator("pre.code").text_content())
    assert final > 50 and len(set(lengths) - {0}) >= 5, lengths  # the code arrived in pieces

    edit_turn(page, 0, "xs = [3, 1, 2]")
    sync_api.expect(turns(page).nth(0).locator(".status")).to_have_text("ok")

    run_turn(page, "Sort xs and print it.")
    edit_turn(page, 1, "xs.sort()\nprint(xs)")
    second = turns(page).nth(1)
    sync_api.expect(second.locator(".output .stdout")).to_have_text("[1, 2, 3]\n")  # state from turn 1

    run_turn(page, "Print the sum of xs.")
    third = turns(page).nth(2)
    third.locator("button.retry").click()  # the model writes turn 3 again
    sync_api.expect(page.locator("#turns > li.turn.pending")).to_have_count(0)
    sync_api.expect(page.locator("#run")).to_be_enabled()
    sync_api.expect(turns(page)).to_have_count(3)
    sync_api.expect(page.locator("#error")).to_be_hidden()

    page.click("#undo")
    sync_api.expect(turns(page)).to_have_count(2)
    sync_api.expect(turns(page).nth(1).locator(".output .stdout")).to_have_text("[1, 2, 3]\n")

    with page.expect_download() as download_info:
        page.click("#download")
    program = tmp_path / "program.py"
    download_info.value.save_as(program)
    source = program.read_text()
    assert "# Assign the list [3, 1, 2] to a variable named xs.\nxs = [3, 1, 2]\n" in source
    assert "Print the sum" not in source  # undone
    ran = subprocess.run([sys.executable, str(program)], capture_output=True, text=True, timeout=60)
    assert (ran.returncode, ran.stdout) == (0, "[1, 2, 3]\n"), ran.stderr

    page.screenshot(path=str(tmp_path / SCREENSHOT), full_page=True)
    assert (tmp_path / SCREENSHOT).stat().st_size > 10_000
    print(f"screenshot: {tmp_path / SCREENSHOT}")
