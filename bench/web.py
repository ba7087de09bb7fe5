"""The pages' goal (issue 21): the Access Tokens page of a person with 10,000 tokens costs at
most 1.5 times the API's first page of the same size (`GET /v4/apiAccessTokens?limit=N`, N the
page's size), both on the same server (bench/http.py's stack), with wrk, alternating.

The page does more than the listing by design: it loads its session from Redis and renders
HTML. Both read the caller from the store once (the page so that a disabled person or a changed
password ends the session at once); the API's Bearer check is answered from the verification
cache.
"""

from __future__ import annotations

import re

import requests

from bench.http import (
    LISTED_TOKENS,
    PASSWORD,
    ROUNDS,
    SECONDS,
    WORKERS,
    alternating,
    balanced,
    stack,
    wrk,
)
from web.sessions import COOKIE
from web.tokens import PAGE_SIZE

GOAL = 1.5
PAGE_PATH = "/preferences/access-tokens"


def signed_in(url: str, username: str, password: str) -> dict[str, str]:
    """A page session's Cookie header, signed in as a person does: the form with its CSRF token."""
    browser = requests.Session()
    form = browser.get(url + "/login", timeout=30).text
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', form).group(1)  # type: ignore[union-attr]
    answer = browser.post(
        url + "/login",
        data={"csrf_token": csrf, "username": username, "password": password},
        allow_redirects=False,
        timeout=30,
    )
    answer.raise_for_status()
    return {"Cookie": f"{COOKIE}={browser.cookies[COOKIE]}"}


def run() -> str:
    with stack() as s:
        bearer = s.person_with_tokens(LISTED_TOKENS)
        s.settle()  # the projector's catching up would otherwise share the cores
        me = requests.get(s.url + "/v4/people/current", headers=bearer, timeout=30).json()
        cookie = signed_in(s.url, me["username"], PASSWORD)
        page = requests.get(s.url + PAGE_PATH, headers=cookie, timeout=30)
        assert page.status_code == 200 and f"{LISTED_TOKENS} tokens" in page.text, page.text[:300]
        api_url = s.url + f"/v4/apiAccessTokens?limit={PAGE_SIZE}"
        api, pages = alternating(
            balanced(s, lambda: wrk(api_url, headers=bearer)),
            balanced(s, lambda: wrk(s.url + PAGE_PATH, headers=cookie)),
        )
    ratio = api.rate / pages.rate  # the page's cost per request over the API's
    verdict = "met" if ratio <= GOAL else "missed"
    print(
        f"Access Tokens page {pages.rate:,.1f}/s, API first page {api.rate:,.1f}/s: "
        f"the page costs {ratio:.2f} times the API's (goal <= {GOAL}: {verdict})"
    )
    return "\n".join(
        [
            "## Pages (issue 21)",
            "",
            "Command: `python -m bench web`: the same server as `python -m bench http`",
            f"(`ledger serve --workers {WORKERS}` on PostgreSQL and a redis-server of its own),",
            f"a person with {LISTED_TOKENS:,} tokens; wrk for {SECONDS} s per run, the best of",
            f"{ROUNDS} runs of each, the API's and the page's alternating. The page is the first",
            f"of the Access Tokens page ({PAGE_SIZE} rows) with the person's session cookie; the",
            f"API's is `GET /v4/apiAccessTokens?limit={PAGE_SIZE}` with their Bearer token.",
            "",
            "| measure | page, req/s | API, req/s | cost ratio | goal |",
            "|---|---|---|---|---|",
            f"| first page of {PAGE_SIZE}, {LISTED_TOKENS:,} tokens | {pages.rate:,.1f} | "
            f"{api.rate:,.1f} | {ratio:.2f} | <= {GOAL} |",
        ]
    )
