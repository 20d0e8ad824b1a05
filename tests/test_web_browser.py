"""The chat page in a real browser: Debian's chromium driven by Playwright, against a real gateway process
and a real zmqchat server.

The browser is the system's (``CHROMIUM`` or the first of ``chromium``/``chromium-browser``/``google-chrome``
on PATH), launched by its executable path: Playwright never downloads one here. Without a browser (or without
Playwright) these tests skip and say why, except under ``CI=true``, where a missing browser fails them.

Every wait is Playwright's bounded ``expect``/``wait_for`` (WAIT seconds), or a bounded poll; no sleep
stands in for synchronisation. The tests write screenshots to docs/images/.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import time
from pathlib import Path

import pytest
from conftest import WAIT, Proc

from zmqchat.client.sync import Client
from zmqchat.endpoints import free_port_pair
from zmqchat.web import users as u

IMAGES = Path(__file__).resolve().parent.parent / "docs" / "images"
IN_CI = os.environ.get("CI", "").strip().lower() == "true"


def _browser_path() -> str | None:
    for candidate in (os.environ.get("CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if candidate:
            found = shutil.which(candidate) or (candidate if Path(candidate).is_file() else None)
            if found:
                return found
    return None


def _need(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"CI=true but {reason}")
    pytest.skip(reason)


try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:  # pragma: no cover - depends on the machine
    sync_playwright = None  # type: ignore[assignment]

CHROMIUM = _browser_path()


@pytest.fixture(scope="module")
def browser():
    if sync_playwright is None:
        _need("playwright is not installed (pip install playwright; it drives the system's chromium)")
    if CHROMIUM is None:
        _need("no chromium found (apt-get install chromium, or set CHROMIUM=/path/to/chrome)")
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            yield chromium
        finally:
            chromium.close()


class Web:
    """A gateway process on a fixed free port (so a restart comes back at the same address)."""

    def __init__(self, chat, *extra: str) -> None:
        self.chat = chat
        self.extra = extra
        self.http_port = free_port_pair()
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.proc: Proc | None = None

    def start(self) -> Web:
        self.proc = Proc([sys.executable, "-m", "zmqchat.cli.web", "--http-port", str(self.http_port), "--port",
                          str(self.chat.port), "--linger", "5", "--claim-rate", "0", *self.extra], stdin=False)
        self.chat.procs.append(self.proc)
        self.proc.expect("serving http", stream="err")
        return self

    def stop(self) -> None:
        assert self.proc is not None
        self.proc.stop()


# Stands in for the browser's notifications (headless chromium shows none): permission granted, each one noted.
FAKE_NOTIFICATIONS = """
window.__notes = [];
window.Notification = class {
  static permission = "granted";
  static requestPermission() { return Promise.resolve("granted"); }
  constructor(title, options) { window.__notes.push([title, options.body]); }
};
"""


def page_for(browser, web: Web, width: int = 1280, height: int = 800, color_scheme: str = "light",
             init_script: str = ""):
    context = browser.new_context(viewport={"width": width, "height": height}, color_scheme=color_scheme)
    if init_script:
        context.add_init_script(init_script)
    page = context.new_page()
    page.dialogs = []  # type: ignore[attr-defined]
    page.on("dialog", lambda dialog: (page.dialogs.append(dialog.message), dialog.dismiss()))
    page.problems = []  # type: ignore[attr-defined]
    page.on("pageerror", lambda error: page.problems.append(str(error)))
    page.on("console", lambda msg: page.problems.append(msg.text) if msg.type == "error" else None)
    page.goto(web.url)
    return page


def enter(page, name: str, password: str | None = None) -> None:
    page.fill("#login-name", name)
    if password is not None:
        page.fill("#login-password", password)
    page.click("#login-submit")
    expect(page.locator("#app")).to_be_visible(timeout=WAIT * 1000)
    expect(page.locator("#status")).to_be_hidden(timeout=WAIT * 1000)


def say(page, text: str) -> None:
    page.fill("#input", text)
    page.press("#input", "Enter")


def row(page, text: str):
    """The visible message row of the current room whose text is ``text``."""
    return page.locator(".room-log:not([hidden]) .msg[data-seq] .text", has_text=re.compile(f"^{re.escape(text)}$"))


def texts_of(page) -> list[str]:
    return page.locator(".room-log:not([hidden]) .msg[data-seq] .text").all_inner_texts()


def no_problems(*pages, allow: str = "") -> None:
    """No script error, no console error (but those matching ``allow``), no dialog (an alert would be XSS)."""
    for page in pages:
        problems = [p for p in page.problems if not (allow and re.search(allow, p))]
        assert problems == [], problems
        assert page.dialogs == [], page.dialogs


# -- tests


def said(terminal: Proc, text: str, sender: str) -> str:
    """Wait until the terminal client (``--json``) shows ``text`` from ``sender``; returns the line."""
    return terminal.expect(re.escape(f'"sender": "{sender}", "text": {json.dumps(text, ensure_ascii=False)}'))


def test_two_browsers_and_a_terminal_client_chat_in_two_rooms(browser, chat):
    chat.server()
    web = Web(chat).start()
    carol = chat.client("carol", "--json")
    alice = page_for(browser, web)
    enter(alice, "alice")
    bob = page_for(browser, web, 390, 844, color_scheme="dark", init_script=FAKE_NOTIFICATIONS)
    enter(bob, "bob")
    say(alice, "hello from alice's browser")
    expect(row(bob, "hello from alice's browser")).to_be_visible()
    said(carol, "hello from alice's browser", "alice")
    carol.send("hi browsers, from the terminal")
    expect(row(alice, "hi browsers, from the terminal")).to_be_visible()
    expect(row(bob, "hi browsers, from the terminal")).to_be_visible()
    say(bob, "/me waves")
    expect(alice.locator(".msg.action .nick", has_text="* bob")).to_be_visible()
    # the second room: alice with the join box, bob and carol with the slash command
    alice.fill("#join", "dev")
    alice.click("#join-form button")
    expect(alice.locator("#room-name")).to_have_text("#dev")
    say(bob, "/join #dev")
    expect(bob.locator("#room-name")).to_have_text("#dev")
    carol.send("/join #dev")
    expect(alice.locator("#members li", has_text="carol")).to_be_visible()
    carol.send("@alice the build is red")
    expect(row(alice, "@alice the build is red")).to_be_visible()
    expect(alice.locator(".msg.mention")).to_have_count(1)
    say(alice, "looking at it")
    expect(row(bob, "looking at it")).to_be_visible()
    assert '"room": "#dev"' in said(carol, "looking at it", "alice")
    # unread counts: #general is not alice's current room now; a message there counts
    carol.send("/join #general")
    carol.send("meanwhile in general")
    expect(alice.locator('#rooms .room-link[data-room="#general"] .badge')).to_have_text("1")
    expect(alice).to_have_title("(1) zmqchat")
    # a mention in a room bob is not looking at: a notification (he allowed them)
    carol.send("@bob are you there?")
    bob.wait_for_function("() => window.__notes.length > 0", timeout=WAIT * 1000)
    assert bob.evaluate("window.__notes") == [["carol in #general", "@bob are you there?"]]
    expect(bob.locator('#rooms .room-link[data-room="#general"] .badge.mention')).to_have_text("1")
    # the topic, set with the slash command
    say(alice, "/topic fixing the build")
    expect(alice.locator("#topic")).to_have_text("fixing the build")
    say(bob, "I can take the flaky test")
    carol.send("/join #dev")
    carol.send("/me pushes a fix")
    expect(row(alice, "pushes a fix")).to_be_visible()
    expect(row(bob, "pushes a fix")).to_be_visible()
    expect(alice.locator(".msg.sending")).to_have_count(0)
    IMAGES.mkdir(parents=True, exist_ok=True)
    alice.screenshot(path=str(IMAGES / "web-desktop.png"))
    bob.screenshot(path=str(IMAGES / "web-phone.png"))
    no_problems(alice, bob)


def test_reload_and_gateway_restart_resume_with_nothing_lost_or_twice(browser, chat):
    chat.server()
    web = Web(chat).start()
    carol = chat.client("carol", "--json")
    alice = page_for(browser, web)
    enter(alice, "alice")
    for n in range(1, 6):
        carol.send(f"before {n}")
    expect(row(alice, "before 5")).to_be_visible()
    alice.reload()
    expect(row(alice, "before 5")).to_be_visible()
    for n in range(6, 9):
        carol.send(f"after reload {n}")
    expect(row(alice, "after reload 8")).to_be_visible()
    texts = texts_of(alice)
    assert len(texts) == len(set(texts)), texts
    # the gateway goes away: the page says so, and what alice types waits with its id
    web.stop()
    expect(alice.locator("#status")).to_have_text("reconnecting…")
    say(alice, "typed while offline")
    expect(alice.locator(".msg.sending .text", has_text="typed while offline")).to_be_visible()
    for n in range(1, 4):
        carol.send(f"while the gateway was down {n}")
    said(carol, "while the gateway was down 3", "carol")
    web.start()
    expect(alice.locator("#status")).to_be_hidden(timeout=WAIT * 1000)
    expect(row(alice, "while the gateway was down 3")).to_be_visible()
    expect(row(alice, "typed while offline")).to_be_visible()
    expect(alice.locator(".msg.sending")).to_have_count(0)
    said(carol, "typed while offline", "alice")
    carol.send("the last word")
    expect(row(alice, "the last word")).to_be_visible()
    assert carol.count(re.escape('"text": "typed while offline"')) == 1
    texts = texts_of(alice)
    assert len(texts) == len(set(texts)), texts
    assert [t for t in texts if t.startswith("while the gateway")] == [
        f"while the gateway was down {n}" for n in range(1, 4)]
    no_problems(alice, allow="ERR_CONNECTION_REFUSED")  # the reconnects while the gateway was down


def test_user_text_is_shown_as_text(browser, chat):
    chat.server()
    web = Web(chat).start()
    mallory = chat.client("mallory", "--json")
    alice = page_for(browser, web)
    enter(alice, "alice")
    nasty = ["<img src=x onerror=alert(1)>", "<script>alert(2)</script>", '"><svg onload=alert(3)>',
             "<b>bold?</b> &amp; &lt;"]
    for text in nasty:
        mallory.send(text)
    mallory.send("/topic <img src=y onerror=alert(4)>")
    for text in nasty:
        expect(row(alice, text)).to_be_visible()
    expect(alice.locator("#topic")).to_have_text("<img src=y onerror=alert(4)>")
    assert alice.locator("#messages img, #messages script, #messages svg, #messages b").count() == 0
    say(alice, "<i>mine too</i>")
    expect(row(alice, "<i>mine too</i>")).to_be_visible()
    assert alice.locator("#messages i").count() == 0
    no_problems(alice)


def test_users_auth_in_the_browser(browser, chat, tmp_path):
    chat.server()
    users = tmp_path / "users"
    u.set_user(users, "alice", "correct horse", must_exist=False)
    web = Web(chat, "--auth", "users", "--users", str(users)).start()
    alice = page_for(browser, web)
    expect(alice.locator("#login-password")).to_be_visible()
    alice.fill("#login-name", "alice")
    alice.fill("#login-password", "wrong")
    alice.click("#login-submit")
    expect(alice.locator("#login-error")).to_have_text("wrong name or password")
    enter(alice, "alice", "correct horse")
    expect(alice.locator("#me")).to_have_text("you are alice")
    cookies = alice.context.cookies()
    login = next(c for c in cookies if c["name"] == "zmqchat_login")
    assert login["httpOnly"] and login["sameSite"] == "Strict"
    assert alice.evaluate("document.cookie") == ""  # HttpOnly: the page's scripts cannot read it
    say(alice, "logged in for real")
    expect(row(alice, "logged in for real")).to_be_visible()
    alice.click("#logout")
    expect(alice.locator("#login")).to_be_visible()
    no_problems(alice, allow="status of 401")  # the wrong password's answer


def test_scrolling_up_loads_older_history_and_search_finds_a_message(browser, chat):
    chat.server("--rate", "5000", "--burst", "5000")
    web = Web(chat).start()
    with Client("carol", port=chat.port) as carol:
        for n in range(1, 161):
            carol.say(f"old message {n}" + (" needle" if n == 42 else ""))
        assert carol.drain(WAIT)
    alice = page_for(browser, web, 1280, 800)
    enter(alice, "alice")
    expect(row(alice, "old message 160")).to_be_visible()
    expect(alice.locator(".msg.history").first).to_be_visible()
    deadline = time.monotonic() + WAIT
    while row(alice, "old message 1").count() == 0 and time.monotonic() < deadline:
        alice.eval_on_selector("#messages", "box => { box.scrollTop = 0; box.dispatchEvent(new Event('scroll')); }")
        alice.wait_for_function("() => !document.querySelector('.room-log:not([hidden]) .older')"
                                ".textContent.startsWith('loading')", timeout=WAIT * 1000)
    expect(row(alice, "old message 1")).to_be_attached()
    expect(alice.locator(".room-log:not([hidden]) .older")).to_have_text("the start of #general")
    seqs = alice.eval_on_selector_all(".room-log:not([hidden]) .msg[data-seq]", "rows => rows.map(r => +r.dataset.seq)")
    assert seqs == sorted(set(seqs)) and len(seqs) >= 160
    # search (the index may lag the newest batch a moment: ask again until it answers with the message)
    deadline = time.monotonic() + WAIT
    while True:
        alice.fill("#search", "needle")
        alice.press("#search", "Enter")
        expect(alice.locator("#search-results")).to_be_visible()
        if alice.locator("#results .result").count() or time.monotonic() > deadline:
            break
        alice.click("#close-search")
    expect(alice.locator("#results .result mark")).to_have_text("needle")
    expect(alice.locator("#results .result .text")).to_have_text("old message 42 needle")
    no_problems(alice)
