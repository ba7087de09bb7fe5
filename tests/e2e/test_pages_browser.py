"""The pages in a real browser: headless Chromium (Debian's `chromium`, launched by Playwright
through `executable_path`) against `ledger serve` on its own port, as tests/e2e/conftest.py
starts it. Outside CI a missing browser (or axe-core, which `npm ci --prefix tests/e2e`
installs) skips these tests with the reason; under CI=true it fails them."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from playwright.sync_api import expect, sync_playwright

from tests.e2e.conftest import ADMIN, PASSWORD, ROOT, Http, Server, remember

pytestmark = pytest.mark.e2e
SCREENSHOT = ROOT / "docs" / "access-tokens.png"
AXE = ROOT / "tests" / "e2e" / "node_modules" / "axe-core" / "axe.min.js"
TOO_BAD = {"serious", "critical"}  # axe's impacts that fail a page


def _missing(message: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        _missing("Debian's chromium is not installed (apt-get install chromium)")
    assert found is not None
    return found


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    executable = _chromium()
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        yield launched
        launched.close()


def new_page(browser: Any, server: Server, **options: Any) -> Any:
    context = browser.new_context(
        base_url=server.url,
        permissions=["clipboard-read", "clipboard-write"],
        viewport={"width": 1100, "height": 800},
        **options,
    )
    return context.new_page()


def sign_in(page: Any, username: str, password: str) -> None:
    page.goto("/login")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(re.compile(r".*/preferences/access-tokens$"))


def open_generate(page: Any) -> None:
    page.goto("/preferences/access-tokens")
    page.get_by_role("link", name="Generate New Token").click()
    page.wait_for_selector("dialog[open]")


def test_the_seeds_flow_from_sign_in_to_a_deleted_token(
    browser: Any, server: Server, http: Http
) -> None:
    page = new_page(browser, server)
    sign_in(page, *ADMIN)
    # From the user menu, as the seed has it: User menu > Preferences > Access Tokens.
    page.get_by_text("User menu").click()
    page.get_by_role("link", name="Access Tokens").click()
    open_generate(page)
    assert page.get_by_label("Lifetime (days)").input_value() == "30"
    page.get_by_label("Lifetime (days)").fill("7")
    page.get_by_label("Description").fill("browser script")
    page.get_by_role("button", name="Generate").click()
    page.get_by_role("button", name="Copy Token to clipboard").click()
    page.get_by_text("Copied.").wait_for()
    copied = page.evaluate("navigator.clipboard.readText()")
    remember(copied)
    assert copied.startswith("tlk_")
    assert "cannot be retrieved from the application" in page.content()
    me = http("GET", "/v4/people/current", copied)
    assert me.status_code == 200 and me.json()["username"] == "admin"
    assert http.statuses(copied, times=16) == {200}  # both workers verify it, and may cache it
    token_id = me.json()["tokenId"]
    # Leave and come back: the value is nowhere.
    page.goto("/preferences/password")
    page.goto("/preferences/access-tokens")
    assert copied not in page.content()
    assert "browser script" in page.content()
    page.screenshot(path=str(SCREENSHOT))
    row = page.locator("tr", has_text=token_id)
    row.get_by_text("Actions").click()
    row.get_by_role("link", name="Delete Token…").click()
    page.get_by_role("button", name="Delete").click()
    page.wait_for_url(re.compile(r".*/preferences/access-tokens$"))
    assert http.statuses(copied, times=16) == {401}  # Rule 5: on every worker, at once


def test_a_member_is_refused_then_granted_by_an_admin_on_the_people_page(
    browser: Any, server: Server, http: Http, new_workspace: Any
) -> None:
    admin = new_workspace()
    username, _ = http.person(admin=admin)
    member = new_page(browser, server)
    sign_in(member, username, PASSWORD)
    open_generate(member)
    member.get_by_role("button", name="Generate").click()
    assert "not allowed to generate API access tokens" in member.content()
    boss = new_page(browser, server)
    sign_in(boss, *admin)
    boss.goto("/people")
    boss.get_by_role("link", name=username).click()
    boss.get_by_label("Can generate tokens").check()
    boss.get_by_role("button", name="Save").click()
    boss.get_by_text("Saved.").wait_for()
    open_generate(member)
    member.get_by_role("button", name="Generate").click()
    member.get_by_role("button", name="Copy Token to clipboard").wait_for()


def test_never_is_refused_naming_the_maximum_then_allowed_after_workspace_settings(
    browser: Any, server: Server, new_workspace: Any
) -> None:
    admin = new_workspace()
    page = new_page(browser, server)
    sign_in(page, *admin)
    open_generate(page)
    page.get_by_label("Lifetime (days)").fill("-1")
    page.get_by_role("button", name="Generate").click()
    assert "the maximum lifetime is 365 days" in page.locator("#lifetime_days-error").inner_text()
    page.goto("/workspace/settings")
    page.get_by_label("Maximum lifetime for user generated access tokens (days)").fill("-1")
    page.get_by_role("button", name="Save").click()
    page.get_by_text("Workspace settings saved.").wait_for()
    open_generate(page)
    page.get_by_label("Lifetime (days)").fill("-1")
    page.get_by_role("button", name="Generate").click()
    page.get_by_role("button", name="Copy Token to clipboard").wait_for()
    page.goto("/preferences/access-tokens")
    assert page.locator("td[data-label=Expires]", has_text="Never").count() == 1


def test_a_disabled_persons_open_session_ends(
    browser: Any, server: Server, http: Http, new_workspace: Any
) -> None:
    admin = new_workspace()
    username, person_id = http.person(admin=admin)
    member = new_page(browser, server)
    sign_in(member, username, PASSWORD)
    response = http("PATCH", f"/v4/people/{person_id}", admin, json={"disabled": True})
    assert response.status_code == 200
    member.goto("/preferences/access-tokens")
    assert "/login" in member.url


def test_a_signed_out_cookie_replayed_is_refused(browser: Any, server: Server) -> None:
    page = new_page(browser, server)
    sign_in(page, *ADMIN)
    cookie = next(c for c in page.context.cookies() if c["name"] == "ledger_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Lax"
    page.get_by_text("User menu").click()
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url(re.compile(r".*/login\?signed_out=1$"))
    replay = requests.get(
        server.url + "/preferences/access-tokens",
        cookies={"ledger_session": cookie["value"]},
        allow_redirects=False,
        timeout=10,
    )
    assert replay.status_code == 302 and "/login" in replay.headers["Location"]


def test_a_post_without_its_csrf_token_is_refused(browser: Any, server: Server, http: Http) -> None:
    page = new_page(browser, server)
    sign_in(page, *ADMIN)
    before = http("GET", "/v4/apiAccessTokens", ADMIN).json()["count"]
    page.goto("/preferences/access-tokens/new")
    page.evaluate("document.querySelector('dialog input[name=csrf_token]').remove()")
    page.get_by_role("button", name="Generate").click()
    assert "not sent from this site" in page.content()
    assert http("GET", "/v4/apiAccessTokens", ADMIN).json()["count"] == before


def test_every_page_fits_a_375_px_screen(browser: Any, server: Server) -> None:
    page = new_page(browser, server)
    sign_in(page, *ADMIN)
    page.set_viewport_size({"width": 375, "height": 700})
    for path in (
        "/preferences/access-tokens",
        "/preferences/access-tokens/new",
        "/people",
        "/workspace/settings",
        "/audit",
        "/preferences/password",
    ):
        page.goto(path)
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 375, (path, width)


# What has the focus, by the name a person sees, and whether they can see where it is.
FOCUSED = """() => {
  const e = document.activeElement;
  const style = getComputedStyle(e);
  const name = e.labels && e.labels.length ? e.labels[0].innerText : e.innerText || e.value;
  return {
    name: (name || "").trim(),
    visible: e !== document.body && e.matches(":focus-visible")
      && style.outlineStyle !== "none" && parseFloat(style.outlineWidth) >= 2,
  };
}"""


def tab_to(page: Any, name: str, limit: int = 30) -> None:
    """Press Tab until what has the focus is named `name` (a dialog may have given it already),
    each stop showing its focus."""
    focused = page.evaluate(FOCUSED)
    for _ in range(limit):
        if focused["name"] == name:
            assert focused["visible"], f"focus not visible on {name!r}"
            return
        page.keyboard.press("Tab")
        focused = page.evaluate(FOCUSED)
        assert focused["visible"], f"focus not visible on {focused['name'][:80]!r}"
    pytest.fail(f"{name!r} not reached in {limit} presses of Tab")


def follow(page: Any, key: str) -> None:
    """Press `key` on what has the focus, and wait for the page it leads to."""
    with page.expect_navigation():
        page.keyboard.press(key)


def test_sign_in_generate_and_delete_with_the_keyboard_alone(
    browser: Any, server: Server, http: Http, new_workspace: Any
) -> None:
    username, password = new_workspace()
    page = new_page(browser, server)
    page.goto("/login")
    # The username field has the focus (autofocus), once the page has given it: typing before
    # that lost the first letters on a busy machine.
    expect(page.get_by_label("Username")).to_be_focused()
    page.keyboard.type(username)
    tab_to(page, "Password")
    page.keyboard.type(password)
    follow(page, "Enter")
    tab_to(page, "Generate New Token")
    follow(page, "Enter")
    tab_to(page, "Description")
    page.keyboard.type("typed, never clicked")
    tab_to(page, "Generate")
    follow(page, "Space")
    token = page.locator("#token-value").input_value()
    remember(token)
    assert http.status(token) == 200
    tab_to(page, "Close")
    follow(page, "Enter")
    tab_to(page, "Actions")
    page.keyboard.press("Space")  # opens the row's menu
    tab_to(page, "Delete Token…")
    follow(page, "Enter")
    tab_to(page, "Delete")
    follow(page, "Space")
    assert "deleted" in page.content()
    assert http.status(token) == 401


def violations(page: Any) -> list[str]:
    """axe-core's serious and critical findings on the page as it is now, each with where."""
    page.add_script_tag(path=str(AXE))
    found = page.evaluate("axe.run()")["violations"]
    return [
        f"{v['id']} ({v['impact']}): {v['help']} at {[n['target'] for n in v['nodes']]}"
        for v in found
        if v["impact"] in TOO_BAD
    ]


def test_no_page_has_a_serious_accessibility_violation(
    browser: Any, server: Server, http: Http, new_workspace: Any
) -> None:
    if not AXE.exists():
        _missing("axe-core is not installed (npm ci --prefix tests/e2e)")
    admin = new_workspace()
    _, person_id = http.person(admin=admin)
    # axe is injected as an inline script, which the pages' CSP refuses (as it should).
    page = new_page(browser, server, bypass_csp=True)
    found: dict[str, list[str]] = {}

    def check(name: str) -> None:
        found[name] = violations(page)

    page.goto("/login")
    check("Sign in")
    sign_in(page, *admin)
    check("Access Tokens (empty)")
    open_generate(page)
    check("Generate New Token")
    page.get_by_label("Lifetime (days)").fill("0")
    page.get_by_role("button", name="Generate").click()
    check("Generate New Token, refused")
    page.get_by_label("Lifetime (days)").fill("7")
    page.get_by_role("button", name="Generate").click()
    page.get_by_role("button", name="Copy Token to clipboard").wait_for()
    remember(page.locator("#token-value").input_value())
    check("the new token")
    page.goto("/preferences/access-tokens")
    check("Access Tokens")
    page.locator("summary", has_text="Actions").click()
    check("Access Tokens, Actions open")
    page.get_by_role("link", name="Delete Token…").click()
    page.wait_for_selector("dialog[open]")
    check("Delete Token")
    for name, path in (
        ("Workspace Settings", "/workspace/settings"),
        ("People", "/people"),
        ("a person's page", f"/people/{person_id}"),
        ("Audit Trail", "/audit"),
        ("Password", "/preferences/password"),
    ):
        page.goto(path)
        check(name)
    page.get_by_text("User menu").click()
    check("the user menu open")
    page.goto("/nonexistent")
    check("an unknown page")
    assert {name: v for name, v in found.items() if v} == {}


def test_the_screenshot_is_in_the_docs() -> None:
    assert Path(SCREENSHOT).exists()
