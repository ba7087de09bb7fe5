"""The pages for people, over Flask's test client: each page, each form and each refusal."""

from __future__ import annotations

from types import CodeType

import pytest
from flask import Flask

from api.app import create_app
from bootstrap import Services
from ledger.domainmodel import USERNAME_LIMIT
from tests.conftest import PASSWORD, World
from tests.unit.conftest import basic, bearer
from tests.unit.web_support import TOKEN_VALUE, Browser, errors

PAGES = (
    "/preferences/access-tokens",
    "/preferences/access-tokens/new",
    "/preferences/password",
    "/workspace/settings",
    "/people",
    "/audit",
)
ADMIN_PAGES = ("/workspace/settings", "/people", "/audit", "/audit/export?format=csv")


@pytest.fixture
def app(services: Services):  # type: ignore[no-untyped-def]
    app = create_app(services.settings, services)
    app.testing = True
    return app


@pytest.fixture
def world(services: Services) -> World:
    return World(services.ledger)


@pytest.fixture
def browser(app, world) -> Browser:  # type: ignore[no-untyped-def]
    return Browser(app.test_client())


def new_browser(app) -> Browser:  # type: ignore[no-untyped-def]
    return Browser(app.test_client())


@pytest.fixture
def admin(browser: Browser) -> Browser:
    assert browser.sign_in("ada").status_code == 302
    return browser


@pytest.fixture
def member(app, world) -> Browser:  # type: ignore[no-untyped-def]
    member = new_browser(app)
    assert member.sign_in("max").status_code == 302
    return member


def generate(browser: Browser, days: str = "30", description: str = "") -> tuple[int, str]:
    browser.get("/preferences/access-tokens/new")
    response = browser.post(
        "/preferences/access-tokens", {"lifetime_days": days, "description": description}
    )
    return response.status_code, response.get_data(as_text=True)


# Signing in and out


@pytest.mark.parametrize("path", [*PAGES, "/", "/audit/export"])
def test_signed_out_every_page_leads_to_sign_in(browser: Browser, path: str) -> None:
    response = browser.get(path)
    assert response.status_code == 302
    assert response.location.startswith("/login?next=")


def test_the_sign_in_page_has_the_seeds_words(browser: Browser) -> None:
    page = browser.get("/login").get_data(as_text=True)
    for words in ("Username", "Password", "Sign in"):
        assert words in page
    assert "Sign out" not in page


def test_signing_in_leads_back_to_the_page_asked_for(browser: Browser) -> None:
    browser.get("/login?next=/people")
    response = browser.post("/login?next=/people", {"username": "ada", "password": PASSWORD})
    assert response.location == "/people"


@pytest.mark.parametrize("elsewhere", ["//evil.example/x", "https://evil.example/", "evil"])
def test_signing_in_never_leads_off_the_site(browser: Browser, elsewhere: str) -> None:
    browser.get("/login")
    response = browser.post(f"/login?next={elsewhere}", {"username": "ada", "password": PASSWORD})
    assert response.location == "/preferences/access-tokens"


def test_a_wrong_password_is_refused_in_words(browser: Browser) -> None:
    browser.sign_in("ada")
    browser.client.delete_cookie("ledger_session")
    response = browser.sign_in("ada", "not the password")
    assert response.status_code == 401
    assert errors(response) == ["Invalid username or password"]
    assert "not the password" not in response.get_data(as_text=True)


def test_rule_8_locks_the_sign_in_page_as_it_does_basic_auth(browser: Browser) -> None:
    for _ in range(USERNAME_LIMIT.limit):
        assert browser.sign_in("ada", "wrong password!").status_code == 401
    response = browser.sign_in("ada")  # the right password, too late
    assert response.status_code == 429
    assert int(response.headers["Retry-After"]) > 0
    assert "Too many failed attempts" in errors(response)[0]


def test_signed_in_every_page_has_sign_out_and_the_access_tokens_link(admin: Browser) -> None:
    for path in PAGES:
        page = admin.get(path).get_data(as_text=True)
        assert "Sign out" in page, path
        assert 'href="/preferences/access-tokens">Access Tokens</a>' in page, path


def test_signing_out_ends_the_session_for_every_copy_of_the_cookie(app, admin: Browser) -> None:  # type: ignore[no-untyped-def]
    copied = admin.cookie
    admin.get("/preferences/access-tokens")
    assert admin.post("/logout").location == "/login?signed_out=1"
    replay = new_browser(app)
    replay.client.set_cookie("ledger_session", copied)
    assert replay.get("/preferences/access-tokens").status_code == 302


def test_sign_in_and_out_are_in_the_audit_trail(services: Services, admin: Browser) -> None:
    admin.get("/preferences/access-tokens")
    admin.post("/logout")
    admin.sign_in("ada")
    trail = admin.get("/audit?type=session.signed_in&type=session.signed_out")
    page = trail.get_data(as_text=True)
    assert page.count("session.signed_in</td>") == 2
    assert page.count("session.signed_out</td>") == 1


def test_signing_in_gives_a_new_session_id(browser: Browser) -> None:
    browser.get("/login")
    before = browser.cookie
    browser.post("/login", {"username": "ada", "password": PASSWORD})
    assert browser.cookie not in (None, before)


# Session security


def test_the_cookie_is_httponly_and_samesite_lax_and_secure_only_behind_https(
    browser: Browser,
) -> None:
    plain = browser.get("/login").headers["Set-Cookie"]
    assert "HttpOnly" in plain and "SameSite=Lax" in plain and "Secure" not in plain
    # The test client's 127.0.0.1 is a trusted proxy here (tests/unit/conftest.py).
    proxied = browser.get("/login", headers={"X-Forwarded-Proto": "https"})
    assert "Secure" in proxied.headers["Set-Cookie"]


def test_x_forwarded_proto_from_an_untrusted_peer_is_ignored(browser: Browser) -> None:
    response = browser.get(
        "/login", headers={"X-Forwarded-Proto": "https"}, environ_base={"REMOTE_ADDR": "192.0.2.9"}
    )
    assert "Secure" not in response.headers["Set-Cookie"]


def test_the_cookie_holds_only_an_id_that_redis_does_not(
    services: Services, admin: Browser
) -> None:
    cookie = admin.cookie
    assert cookie is not None and len(cookie) >= 43
    assert not any(cookie.encode() in key for key in services.redis.keys("web:*"))


@pytest.mark.parametrize(
    ("path", "form"),
    [
        ("/login", {"username": "ada", "password": PASSWORD}),
        ("/preferences/access-tokens", {"lifetime_days": "30", "description": "x"}),
        ("/workspace/settings", {"maxTokenLifetimeDays": "-1"}),
        ("/people", {"username": "eve", "password": PASSWORD, "role": "admin"}),
        ("/preferences/password", {"current_password": PASSWORD, "new_password": "x" * 20}),
        ("/logout", {}),
    ],
)
def test_a_post_without_its_csrf_token_changes_nothing(
    services: Services, admin: Browser, path: str, form: dict[str, str]
) -> None:
    admin.get("/preferences/access-tokens")
    head = services.ledger.recorder.max_notification_id()
    response = admin.post(path, form, csrf=False)
    assert response.status_code == 400
    assert "not sent from this site" in response.get_data(as_text=True)
    assert response.mimetype == "text/html"
    assert services.ledger.recorder.max_notification_id() == head
    assert admin.get("/preferences/access-tokens").status_code == 200  # still signed in


def test_a_post_with_another_sessions_csrf_token_is_refused(app, admin: Browser) -> None:  # type: ignore[no-untyped-def]
    other = new_browser(app)
    other.get("/login")
    admin.csrf = other.csrf
    assert admin.post("/preferences/access-tokens", {"lifetime_days": "1"}).status_code == 400


@pytest.mark.parametrize("path", [*PAGES, "/login"])
def test_pages_send_a_csp_without_inline_script_and_refuse_framing(
    admin: Browser, path: str
) -> None:
    headers = admin.get(path).headers
    policy = headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy
    assert "frame-ancestors 'none'" in policy
    assert headers["X-Frame-Options"] == "DENY"


@pytest.mark.parametrize("path", [*PAGES, "/login"])
def test_pages_have_no_inline_script_and_every_asset_is_our_own(
    app, world: World, path: str
) -> None:
    admin = new_browser(app)
    if path != "/login":
        admin.sign_in("ada")
    page = admin.get(path).get_data(as_text=True)
    assert "<script>" not in page and " on" + "click=" not in page and "style=" not in page
    assert "http://" not in page and "https://" not in page
    for asset in ("/assets/app.css", "/assets/app.js"):
        assert asset in page
        assert admin.get(asset).status_code == 200


def test_the_session_ends_when_idle(services: Services, app, admin: Browser) -> None:  # type: ignore[no-untyped-def]
    store = app.extensions["web_sessions"]
    now = store.clock()
    store.clock = lambda: now + services.settings.session_idle_seconds + 1
    assert admin.get("/preferences/access-tokens").status_code == 302


def test_an_unchanged_session_is_saved_only_when_its_idle_time_is_due_to_slide(
    app, admin: Browser, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    store = app.extensions["web_sessions"]
    admin.get("/preferences/access-tokens")  # the first page after signing in adds a CSRF token
    saved: list[str] = []
    save = store.save
    monkeypatch.setattr(store, "save", lambda sid, data: (saved.append(sid), save(sid, data)))
    start = store.clock()
    assert admin.get("/preferences/access-tokens").status_code == 200
    assert saved == []  # issue 21: a write to Redis on every request
    due = start + store.idle_seconds / 30
    store.clock = lambda: due
    assert admin.get("/preferences/access-tokens").status_code == 200
    assert len(saved) == 1
    store.clock = lambda: due + store.idle_seconds - 1  # idle since `due`, not since `start`
    assert admin.get("/preferences/access-tokens").status_code == 200


def test_the_session_ends_at_its_absolute_limit_however_busy(
    services: Services, app, admin: Browser
) -> None:  # type: ignore[no-untyped-def]
    store = app.extensions["web_sessions"]
    start = store.clock()
    step = services.settings.session_idle_seconds - 1
    t = start
    while t + step < start + services.settings.session_max_seconds:
        t += step
        store.clock = lambda t=t: t
        assert admin.get("/preferences/access-tokens").status_code == 200
    store.clock = lambda: start + services.settings.session_max_seconds
    assert admin.get("/preferences/access-tokens").status_code == 302


# Access Tokens


def test_the_access_tokens_page_has_the_seeds_columns_and_buttons(admin: Browser) -> None:
    generate(admin, "10", "my script")
    page = admin.get("/preferences/access-tokens").get_data(as_text=True)
    for words in (
        "Token ID",
        "Description",
        "Status",
        "Created",
        "Expires",
        "Last Used",
        "Generate New Token",
        "Actions",
        "Delete Token…",
        "my script",
        "Active",
    ):
        assert words in page, words
    assert "<caption>1 token</caption>" in page
    generate(admin, "10", "another")
    assert "<caption>2 tokens</caption>" in admin.get("/preferences/access-tokens").get_data(
        as_text=True
    )


def test_descriptions_are_escaped_in_token_tables(admin: Browser, world: World) -> None:
    # Issue 21: the tables write the ids and times our code makes unescaped, never a description.
    generate(admin, "10", '<b>mine</b> & "ours"')
    for path in ("/preferences/access-tokens", f"/people/{world.admin_id}"):
        page = admin.get(path).get_data(as_text=True)
        assert "&lt;b&gt;mine&lt;/b&gt; &amp; &#34;ours&#34;" in page and "<b>" not in page, path


def test_the_access_tokens_page_reads_the_signed_in_person_from_the_store_once(
    services: Services, admin: Browser, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Issue 21: the list took the person the session check had just read from the store.
    events_of = services.ledger._events_of
    read: list[object] = []
    select = events_of.select
    monkeypatch.setattr(
        events_of, "select", lambda ids: (read.append(ids := list(ids)), select(ids))[1]
    )
    assert admin.get("/preferences/access-tokens").status_code == 200
    assert read == [[world.admin_id]]


def test_the_access_tokens_page_compiles_no_template_once_rendered(
    app: Flask, admin: Browser, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Issue 21: a template compiled on every request would cost the page a tenth of its time.
    admin.get("/preferences/access-tokens")
    compiled: list[str | None] = []
    compile_ = app.jinja_env.compile

    def counted(source: str, name: str | None = None, filename: str | None = None) -> CodeType:
        compiled.append(name)
        return compile_(source, name, filename)

    monkeypatch.setattr(app.jinja_env, "compile", counted)
    assert admin.get("/preferences/access-tokens").status_code == 200
    assert compiled == []


def test_the_generate_dialog_defaults_to_30_days_and_shows_the_maximum(admin: Browser) -> None:
    page = admin.get("/preferences/access-tokens/new").get_data(as_text=True)
    assert 'name="lifetime_days" type="number" value="30"' in page
    assert "Maximum: 365 days." in page
    for words in ("Lifetime (days)", "Description", "Generate"):
        assert words in page


@pytest.mark.parametrize(
    ("path", "attributes"),
    [
        ("/preferences/access-tokens/new", ('min="-1"', 'max="365"', 'maxlength="255"')),
        ("/preferences/password", ('autocomplete="current-password"', "required")),
        ("/people", ('autocomplete="off"', 'autocomplete="new-password"')),
        ("/workspace/settings", ('min="-1"', 'step="1"')),
    ],
)
def test_form_fields_get_their_attributes_unescaped(
    admin: Browser, path: str, attributes: tuple[str, ...]
) -> None:
    page = admin.get(path).get_data(as_text=True)
    assert "&#34;" not in page
    for attribute in attributes:
        assert f" {attribute}" in page


def test_a_new_token_is_shown_once_not_cached_and_works_with_the_api(app, admin: Browser) -> None:  # type: ignore[no-untyped-def]
    admin.get("/preferences/access-tokens/new")
    response = admin.post(
        "/preferences/access-tokens", {"lifetime_days": "7", "description": "deploy"}
    )
    assert response.status_code == 201
    assert response.headers["Cache-Control"] == "no-store"
    page = response.get_data(as_text=True)
    value = TOKEN_VALUE.search(page).group(0)  # type: ignore[union-attr]
    assert "Copy Token to clipboard" in page
    assert "cannot be retrieved from the application after it has been created" in page
    api = app.test_client()
    me = api.get("/v4/people/current", headers=bearer(value))
    assert me.status_code == 200 and me.json["username"] == "ada"
    for path in PAGES:
        assert value not in admin.get(path).get_data(as_text=True)


def test_the_token_is_issued_with_method_session(services: Services, admin: Browser) -> None:
    generate(admin, "1", "by page")
    trail = admin.get("/audit/export?format=jsonl&type=token.issued").get_data(as_text=True)
    assert '"method":"session"' in trail.replace(" ", "")


def test_never_expiring_is_refused_against_a_maximum_which_is_named(admin: Browser) -> None:
    status, page = generate(admin, "-1")
    assert status == 403
    assert "maximum lifetime is 365 days" in page
    assert 'id="lifetime_days-error"' in page
    assert TOKEN_VALUE.search(page) is None


def test_too_many_days_are_refused_naming_the_maximum(admin: Browser) -> None:
    status, page = generate(admin, "366", "kept")
    assert status == 403
    assert "maximum token lifetime of 365 days" in page
    assert 'value="kept"' in page  # what was typed is kept


@pytest.mark.parametrize("days", ["", "0", "-2", "1.5", "abc", "٣"])
def test_bad_days_are_a_clear_400_on_the_field(
    services: Services, admin: Browser, days: str
) -> None:
    head = services.ledger.recorder.max_notification_id()
    status, page = generate(admin, days)
    assert status == 400
    assert 'id="lifetime_days-error"' in page
    assert services.ledger.recorder.max_notification_id() == head


@pytest.mark.parametrize("description", ["x" * 256, "bell\x07"])
def test_a_bad_description_is_a_400_on_its_field(admin: Browser, description: str) -> None:
    status, page = generate(admin, "1", description)
    assert status == 400
    assert 'id="description-error"' in page


def test_never_expiring_is_allowed_once_the_maximum_is_unlimited(admin: Browser) -> None:
    admin.get("/workspace/settings")
    form = {"apiAccessTokensEnabled": "on", "maxTokenLifetimeDays": "-1"}
    assert admin.post("/workspace/settings", form).status_code == 302
    assert generate(admin, "-1")[0] == 201
    assert "Never" in admin.get("/preferences/access-tokens").get_data(as_text=True)


def test_a_member_without_the_grant_is_told_they_are_not_allowed(member: Browser) -> None:
    status, page = generate(member, "1")
    assert status == 403
    assert "not allowed to generate API access tokens" in page


def test_delete_token_is_confirmed_then_refused_at_once(app, admin: Browser) -> None:  # type: ignore[no-untyped-def]
    _, page = generate(admin, "1")
    value = TOKEN_VALUE.search(page).group(0)  # type: ignore[union-attr]
    token_id = app.test_client().get("/v4/people/current", headers=bearer(value)).json["tokenId"]
    listed = admin.get("/preferences/access-tokens").get_data(as_text=True)
    assert f'href="/preferences/access-tokens/{token_id}/delete"' in listed
    confirm = admin.get(f"/preferences/access-tokens/{token_id}/delete").get_data(as_text=True)
    assert "Delete" in confirm and token_id in confirm
    response = admin.post(f"/preferences/access-tokens/{token_id}/delete")
    assert response.status_code == 302
    assert app.test_client().get("/v4/people/current", headers=bearer(value)).status_code == 401
    again = admin.post(f"/preferences/access-tokens/{token_id}/delete")
    assert again.status_code == 410 and again.mimetype == "text/html"


def test_someone_elses_token_cannot_be_deleted_from_the_page(
    app, admin: Browser, member: Browser, services: Services
) -> None:  # type: ignore[no-untyped-def]
    _, info = _issue_by_api(app, "ada")
    member.get("/preferences/access-tokens")
    response = member.post(f"/preferences/access-tokens/{info['tokenId']}/delete")
    assert response.status_code == 404
    assert "not found" in response.get_data(as_text=True)


def _issue_by_api(app, username: str):  # type: ignore[no-untyped-def]
    response = app.test_client().post("/v4/apiAccessTokens", headers=basic(username), json={})
    assert response.status_code == 201
    return response.json["tokenValue"], response.json["tokenInfo"]


def test_the_list_pages_through_many_tokens(app, admin: Browser) -> None:  # type: ignore[no-untyped-def]
    for _ in range(101):
        admin.client.application.extensions["ledger"].ledger.issue_token(
            _session_of(app, "ada"), 3600, ""
        )
    first = admin.get("/preferences/access-tokens").get_data(as_text=True)
    assert "Page 1 of 2" in first
    second = admin.get("/preferences/access-tokens?page=2").get_data(as_text=True)
    assert second.count('data-label="Token ID"') == 1


def _session_of(app, username: str):  # type: ignore[no-untyped-def]
    from ledger.domainmodel import AuditContext, person_id_for

    return AuditContext("session", actor_id=person_id_for(username))


# Admin pages


@pytest.mark.parametrize("path", ADMIN_PAGES)
def test_admin_pages_refuse_members_in_words(member: Browser, path: str) -> None:
    response = member.get(path)
    assert response.status_code == 403
    assert response.mimetype == "text/html"
    assert "Only an administrator" in response.get_data(as_text=True)


def test_members_see_no_admin_links(member: Browser) -> None:
    page = member.get("/preferences/access-tokens").get_data(as_text=True)
    assert "Workspace Settings" not in page and "Audit Trail" not in page


def test_workspace_settings_has_the_seeds_words_and_saves(
    services: Services, admin: Browser
) -> None:
    page = admin.get("/workspace/settings").get_data(as_text=True)
    for words in (
        "Enable API access tokens",
        "Allow members to generate access tokens",
        "Maximum lifetime for user generated access tokens (days)",
        "Save",
    ):
        assert words in page
    form = {
        "apiAccessTokensEnabled": "on",
        "membersCanGenerateTokens": "on",
        "maxTokenLifetimeDays": "90",
    }
    assert admin.post("/workspace/settings", form).status_code == 302
    assert services.ledger.get_settings(_session_of(None, "ada")) == {
        "apiAccessTokensEnabled": True,
        "membersCanGenerateTokens": True,
        "maxTokenLifetimeDays": 90,
    }


@pytest.mark.parametrize("days", ["0", "-5", "x", "", "40000"])
def test_bad_maximums_are_a_400_on_the_field_and_nothing_changes(
    services: Services, admin: Browser, days: str
) -> None:
    admin.get("/workspace/settings")
    head = services.ledger.recorder.max_notification_id()
    response = admin.post(
        "/workspace/settings", {"membersCanGenerateTokens": "on", "maxTokenLifetimeDays": days}
    )
    assert response.status_code == 400
    assert 'id="maxTokenLifetimeDays-error"' in response.get_data(as_text=True)
    assert services.ledger.recorder.max_notification_id() == head


def test_people_lists_adds_and_links_each_person(admin: Browser) -> None:
    page = admin.get("/people").get_data(as_text=True)
    for words in ("Username", "Password", "Role", "Add", ">ada</a>", ">max</a>"):
        assert words in page
    response = admin.post("/people", {"username": "eve", "password": PASSWORD, "role": "member"})
    assert response.status_code == 302
    assert ">eve</a>" in admin.get("/people").get_data(as_text=True)


@pytest.mark.parametrize(
    ("form", "status", "field"),
    [
        ({"username": "max", "password": PASSWORD, "role": "member"}, 409, "username"),
        ({"username": "bad name", "password": PASSWORD, "role": "member"}, 400, "username"),
        ({"username": "eve", "password": "short", "role": "member"}, 400, "password"),
        ({"username": "eve", "password": PASSWORD, "role": "king"}, 400, "role"),
    ],
)
def test_adding_a_person_refused_on_the_field(
    services: Services, admin: Browser, form: dict[str, str], status: int, field: str
) -> None:
    admin.get("/people")
    head = services.ledger.recorder.max_notification_id()
    response = admin.post("/people", form)
    assert response.status_code == status
    page = response.get_data(as_text=True)
    assert f'id="{field}-error"' in page
    assert PASSWORD not in page
    assert services.ledger.recorder.max_notification_id() == head


def test_the_person_page_grants_tokens_and_a_member_may_then_generate(
    app, admin: Browser, member: Browser, world: World
) -> None:  # type: ignore[no-untyped-def]
    assert generate(member, "1")[0] == 403
    page = admin.get(f"/people/{world.member_id}").get_data(as_text=True)
    for words in ("Role", "Can generate tokens", "Disabled", "Save"):
        assert words in page
    response = admin.post(
        f"/people/{world.member_id}", {"role": "member", "can_generate_tokens": "on"}
    )
    assert response.status_code == 302
    assert generate(member, "1")[0] == 201


def test_disabling_a_person_ends_their_open_session_at_once(
    admin: Browser, member: Browser, world: World
) -> None:
    assert member.get("/preferences/access-tokens").status_code == 200
    admin.get(f"/people/{world.member_id}")
    admin.post(f"/people/{world.member_id}", {"role": "member", "disabled": "on"})
    assert member.get("/preferences/access-tokens").status_code == 302
    assert member.sign_in("max").status_code == 403


def test_a_person_disabled_over_the_api_is_signed_out_of_the_pages(
    app, member: Browser, world: World
) -> None:  # type: ignore[no-untyped-def]
    patched = app.test_client().patch(
        f"/v4/people/{world.member_id}", headers=basic("ada"), json={"disabled": True}
    )
    assert patched.status_code == 200
    assert member.get("/preferences/access-tokens").status_code == 302


def test_an_admin_cannot_disable_themselves_from_the_page(admin: Browser, world: World) -> None:
    admin.get(f"/people/{world.admin_id}")
    response = admin.post(f"/people/{world.admin_id}", {"role": "admin", "disabled": "on"})
    assert response.status_code == 403
    assert "cannot disable or demote themselves" in response.get_data(as_text=True)


def test_the_admin_deletes_a_persons_token_from_their_page(
    app, admin: Browser, world: World
) -> None:  # type: ignore[no-untyped-def]
    admin.get(f"/people/{world.member_id}")
    admin.post(f"/people/{world.member_id}", {"role": "member", "can_generate_tokens": "on"})
    value, info = _issue_by_api(app, "max")
    page = admin.get(f"/people/{world.member_id}").get_data(as_text=True)
    assert f'action="/people/{world.member_id}/tokens/{info["tokenId"]}/delete"' in page
    response = admin.post(f"/people/{world.member_id}/tokens/{info['tokenId']}/delete")
    assert response.status_code == 302
    assert app.test_client().get("/v4/people/current", headers=bearer(value)).status_code == 401


def test_an_unknown_person_is_a_404_page(admin: Browser) -> None:
    response = admin.get("/people/00000000-0000-0000-0000-000000000000")
    assert response.status_code == 404 and response.mimetype == "text/html"


def test_the_audit_trail_is_newest_first_with_filters_exports_and_the_check(admin: Browser) -> None:
    generate(admin, "1", "first")
    page = admin.get("/audit").get_data(as_text=True)
    assert (
        page.index("token.issued</td>")
        < page.index("session.signed_in</td>")
        < page.index("person.added</td>")
    )
    assert "The trail is intact" in page
    assert 'href="/audit/export?format=csv"' in page and 'href="/audit/export?format=jsonl"' in page
    only = admin.get("/audit?type=token.issued").get_data(as_text=True)
    assert "person.added</td>" not in only
    csv = admin.get("/audit/export?format=csv")
    assert csv.mimetype == "text/csv" and "token.issued" in csv.get_data(as_text=True)


def test_the_audit_trail_pages_with_a_cursor(admin: Browser) -> None:
    page = admin.get("/audit?limit=2").get_data(as_text=True)
    assert "Older events" in page
    assert "cursor=" in page


@pytest.mark.parametrize("query", ["type=nonsense", "from=yesterday", "actorId=42", "limit=0"])
def test_bad_audit_filters_are_a_400_page(admin: Browser, query: str) -> None:
    response = admin.get(f"/audit?{query}")
    assert response.status_code == 400
    assert "The filters are not valid" in response.get_data(as_text=True)


# Password


def _token_and_another_session(app) -> tuple[str, Browser]:  # type: ignore[no-untyped-def]
    """Ada's token, issued over the API, and a session of hers in another browser."""
    value, _ = _issue_by_api(app, "ada")
    other = new_browser(app)
    other.sign_in("ada")
    return value, other


def test_changing_the_password_ends_other_sessions_but_not_this_one_nor_tokens(
    app, admin: Browser
) -> None:  # type: ignore[no-untyped-def]
    value, other = _token_and_another_session(app)
    page = admin.get("/preferences/password").get_data(as_text=True)
    for words in ("Current password", "New password", "Change password"):
        assert words in page
    new = "another long passphrase"
    response = admin.post(
        "/preferences/password", {"current_password": PASSWORD, "new_password": new}
    )
    assert response.status_code == 302
    assert admin.get("/preferences/access-tokens").status_code == 200
    assert other.get("/preferences/access-tokens").status_code == 302
    assert app.test_client().get("/v4/people/current", headers=bearer(value)).status_code == 200
    assert new not in admin.get(response.location).get_data(as_text=True)


def test_a_password_changed_over_the_api_ends_every_page_session_but_no_token(
    app, admin: Browser
) -> None:  # type: ignore[no-untyped-def]
    value, other = _token_and_another_session(app)
    body = {"currentPassword": PASSWORD, "newPassword": "another long passphrase"}
    client = app.test_client()
    changed = client.post("/v4/people/current/password", headers=basic("ada"), json=body)
    assert changed.status_code == 204, changed.get_data(as_text=True)
    for browser in (admin, other):
        response = browser.get("/preferences/access-tokens")
        assert response.status_code == 302 and response.location.startswith("/login")
    assert client.get("/v4/people/current", headers=bearer(value)).status_code == 200


def test_a_session_begun_after_a_password_change_stays(app, world: World) -> None:  # type: ignore[no-untyped-def]
    from ledger.domainmodel import AuditContext

    world.ledger.set_password(AuditContext.cli(), world.admin_id, "another long passphrase")
    later = new_browser(app)
    assert later.sign_in("ada", "another long passphrase").status_code == 302
    assert later.get("/preferences/access-tokens").status_code == 200


@pytest.mark.parametrize(
    ("current", "new", "status", "field"),
    [
        ("wrong password!", "another long passphrase", 403, "current_password"),
        (PASSWORD, "short", 400, "new_password"),
    ],
)
def test_a_refused_password_change_is_shown_on_its_field(
    admin: Browser, current: str, new: str, status: int, field: str
) -> None:
    admin.get("/preferences/password")
    response = admin.post(
        "/preferences/password", {"current_password": current, "new_password": new}
    )
    assert response.status_code == status
    page = response.get_data(as_text=True)
    assert f'id="{field}-error"' in page
    assert current not in page and new not in page


def test_the_apis_json_errors_are_unchanged(app) -> None:  # type: ignore[no-untyped-def]
    response = app.test_client().get("/v4/apiAccessTokens")
    assert response.status_code == 401 and response.mimetype == "application/json"


BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"


@pytest.mark.parametrize(
    ("path", "accept"),
    [
        ("/nonexistent", BROWSER_ACCEPT),
        ("/nonexistent", "*/*"),
        ("/preferences/nothing/here", BROWSER_ACCEPT),
        ("/v4x", BROWSER_ACCEPT),
    ],
)
def test_an_unknown_path_asked_by_a_person_is_a_404_page(app, path: str, accept: str) -> None:  # type: ignore[no-untyped-def]
    response = app.test_client().get(path, headers={"Accept": accept})
    assert response.status_code == 404 and response.mimetype == "text/html"
    page = response.get_data(as_text=True)
    assert "<title>Error · Token Ledger</title>" in page and "not found" in page
    assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]


@pytest.mark.parametrize(
    ("path", "accept"),
    [
        ("/v4/nonexistent", BROWSER_ACCEPT),
        ("/v4/apiAccessTokens/not-an-id", BROWSER_ACCEPT),
        ("/docs/nonexistent", BROWSER_ACCEPT),
        ("/metrics/x", BROWSER_ACCEPT),
        ("/nonexistent", "application/json"),
    ],
)
def test_an_unknown_path_asked_by_an_api_client_is_the_json_error(  # type: ignore[no-untyped-def]
    app, path: str, accept: str
) -> None:
    response = app.test_client().get(path, headers={"Accept": accept})
    assert response.status_code == 404 and response.mimetype == "application/json"
    assert response.json["exception"]["name"] == "NotFound"
