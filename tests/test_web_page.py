"""The multi-turn synthesis page end to end in headless Chromium (Debian's `chromium` driven by
Playwright's Python package): three turns, code streaming in, edits that run in the sandbox,
a retry, an undo and the download of a program that runs. Skipped without Chromium/Playwright."""

import http.server
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from generation_helpers import one_thread  # noqa: F401 (fixture)
from serving_helpers import MODEL_NAME, serve, tiny_model

sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (Python package only)")
CHROMIUM = os.environ.get("OPENCODEGEN_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
if not Path(CHROMIUM).is_file():
    pytest.skip("no chromium binary (apt-get install chromium)", allow_module_level=True)
REBOUND = "rebound.test"  # a name the browser resolves to 127.0.0.1, as after DNS rebinding
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", f"--host-resolver-rules=MAP {REBOUND} 127.0.0.1"]
SCREENSHOT = "web-session.png"

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    model, tokenizer = tiny_model(tmp_path_factory.mktemp("tiny"), favour="value =")  # long turns
    with serve(model, tokenizer) as server:
        yield server


@pytest.fixture(scope="module")
def page(server):
    with sync_api.sync_playwright() as playwright:
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

    run_turn(page, "Assign the list [3, 1, 2] to a variable named xs.")
    # how many pieces of the streamed code the browser showed depends on how the network coalesced the
    # events; that the code streams is asserted over raw HTTP (test_serving_sessions)
    assert len(turns(page).nth(0).locator("pre.code").text_content()) > 50

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


CROSS_SITE_POSTS = """async (target) => {
    const results = {};
    try {  // a "simple" request: the browser sends it without asking the server first
        await fetch(target + "/v1/sessions", {method: "POST", mode: "no-cors", body: "{}",
                                              headers: {"Content-Type": "text/plain"}});
        results.textPlain = "sent";
    } catch (e) { results.textPlain = "blocked"; }
    try {  // JSON needs a CORS preflight, which the server does not grant
        await fetch(target + "/v1/sessions", {method: "POST", body: "{}",
                                              headers: {"Content-Type": "application/json"}});
        results.json = "sent";
    } catch (e) { results.json = "blocked"; }
    return results;
}"""


class BlankPage(http.server.BaseHTTPRequestHandler):
    """The attacker's site: an empty page on another port (another origin, no CSP)."""

    def do_GET(self):
        body = b"<!doctype html><title>elsewhere</title>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_another_site_cannot_drive_the_server(server, page):
    sessions = server.app.state.sessions
    before = len(sessions)
    elsewhere = http.server.ThreadingHTTPServer(("127.0.0.1", 0), BlankPage)
    threading.Thread(target=elsewhere.serve_forever, daemon=True).start()
    other = page.context.browser.new_page()
    try:
        other.goto(f"http://127.0.0.1:{elsewhere.server_address[1]}/")
        assert other.evaluate(CROSS_SITE_POSTS, server.url) == {"textPlain": "sent", "json": "blocked"}
        assert len(sessions) == before  # the text/plain POST reached the server and was refused (415)
        rebound = other.goto(server.url.replace("127.0.0.1", REBOUND) + "/")  # DNS rebinding
        assert rebound.status == 421 and "host_not_allowed" in other.content()
    finally:
        other.close()
        elsewhere.shutdown()
