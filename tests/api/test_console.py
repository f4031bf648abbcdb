"""The researcher console's server side: sign-in cookie, cookie auth on /v1 with CSRF protection, safe headers."""

from __future__ import annotations

from http.cookies import SimpleCookie
from typing import Any

import aiohttp
import pytest

from api.auth import CONSOLE_COOKIE
from tests.conftest import BLUEPRINT, Server

SIGN_IN = "/console/sign-in"


@pytest.fixture
async def browser(server: Server) -> Any:
    """A client with its own cookie jar (127.0.0.1 is an IP: the jar must be unsafe to keep cookies for it)."""
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        yield session


async def post_form(
    session: aiohttp.ClientSession, server: Server, path: str, data: Any, **kwargs: Any
) -> tuple[int, str, aiohttp.ClientResponse]:
    async with session.post(server.url + path, data=data, allow_redirects=False, **kwargs) as resp:
        return resp.status, await resp.text(), resp


def set_cookie(resp: aiohttp.ClientResponse) -> SimpleCookie:
    jar: SimpleCookie = SimpleCookie()
    for header in resp.headers.getall("Set-Cookie", []):
        jar.load(header)
    return jar


async def sign_in(session: aiohttp.ClientSession, server: Server) -> None:
    status, _, resp = await post_form(session, server, SIGN_IN, {"key": server.api_key})
    assert status == 303 and resp.headers["Location"] == "/console"


async def get(session: aiohttp.ClientSession, server: Server, path: str, **kwargs: Any) -> tuple[int, Any]:
    async with session.get(server.url + path, allow_redirects=False, **kwargs) as resp:
        body = await resp.json() if resp.content_type == "application/json" else await resp.text()
        return resp.status, body


# --- signing in and out -----------------------------------------------------------------------


async def test_a_good_key_sets_an_httponly_samesite_cookie_and_opens_the_console(
    server: Server, browser: aiohttp.ClientSession
) -> None:
    status, _, resp = await post_form(browser, server, SIGN_IN, {"key": server.api_key, "next": "/console"})
    assert status == 303 and resp.headers["Location"] == "/console"
    morsel = set_cookie(resp)[CONSOLE_COOKIE]
    assert morsel["httponly"] is True
    assert morsel["samesite"] == "Strict" and morsel["path"] == "/"
    assert not morsel["max-age"] and not morsel["expires"]  # ends with the browser session
    status, page = await get(browser, server, "/console")
    assert status == 200 and '<table id="runs">' in page


async def test_a_bad_key_is_a_401_form_error_and_sets_no_cookie(server: Server, browser: aiohttp.ClientSession) -> None:
    for key in ("vv_wrong", " ", "x" * 5000, "<script>alert(1)</script>"):
        status, page, resp = await post_form(browser, server, SIGN_IN, {"key": key})
        assert status in (400, 401), (key, status)
        assert "role='alert'" in page and "<script>alert" not in page
        assert "Set-Cookie" not in resp.headers
    assert len(browser.cookie_jar) == 0
    status, _ = await get(browser, server, "/console")
    assert status == 303


async def test_a_key_blank_only_to_python_is_a_wrong_key_not_a_missing_one(
    server: Server, browser: aiohttp.ClientSession
) -> None:
    """The document calls a key blank by JSON Schema's spaces: a control character such as \x1c is a (wrong) key."""
    status, page, _ = await post_form(browser, server, SIGN_IN, {"key": "\x1c"})
    assert status == 401 and "Enter an API key" not in page
    status, page, _ = await post_form(browser, server, SIGN_IN, {"key": " \u00a0"})
    assert status == 400 and "Enter an API key" in page
    status, _, resp = await post_form(browser, server, SIGN_IN, {"key": f"\u2003{server.api_key}\n"})
    assert status == 303 and resp.headers["Location"] == "/console"  # a pasted key's surrounding spaces are trimmed


async def test_sign_out_clears_the_cookie(server: Server, browser: aiohttp.ClientSession) -> None:
    await sign_in(browser, server)
    assert (await get(browser, server, "/v1/runs"))[0] == 200
    status, _, resp = await post_form(browser, server, "/console/sign-out", {})
    assert status == 303 and resp.headers["Location"] == SIGN_IN
    morsel = set_cookie(resp)[CONSOLE_COOKIE]
    assert morsel.value == "" and morsel["max-age"] == "0"
    assert len(browser.cookie_jar) == 0
    assert (await get(browser, server, "/v1/runs"))[0] == 401
    status, _ = await get(browser, server, "/console")
    assert status == 303


async def test_console_pages_without_a_cookie_redirect_to_sign_in(server: Server) -> None:
    run = await server.create_run()
    async with aiohttp.ClientSession() as anonymous:
        for path in ("/console", "/console?status=completed", f"/console/runs/{run['id']}"):
            status, _ = await get(anonymous, server, path)
            assert status == 303, path
        async with anonymous.get(server.url + f"/console/runs/{run['id']}", allow_redirects=False) as resp:
            assert resp.headers["Location"] == f"{SIGN_IN}?next=%2Fconsole%2Fruns%2F{run['id']}"
        # a stale cookie is no better than none, and is cleared
        async with anonymous.get(
            server.url + "/console", allow_redirects=False, headers={"Cookie": f"{CONSOLE_COOKIE}=vv_revoked"}
        ) as resp:
            assert resp.status == 303 and set_cookie(resp)[CONSOLE_COOKIE].value == ""


async def test_sign_in_returns_to_the_page_asked_for_but_never_off_the_console(
    server: Server, browser: aiohttp.ClientSession
) -> None:
    run = await server.create_run()
    for next_path, expected in (
        (f"/console/runs/{run['id']}", f"/console/runs/{run['id']}"),
        ("/console?status=completed", "/console?status=completed"),
        ("https://evil.example/", "/console"),
        ("//evil.example/console", "/console"),
        ("/v1/runs", "/console"),
    ):
        status, _, resp = await post_form(browser, server, SIGN_IN, {"key": server.api_key, "next": next_path})
        assert status == 303 and resp.headers["Location"] == expected, next_path
    status, _ = await get(browser, server, SIGN_IN + "?next=https://evil.example/")
    assert status == 303  # already signed in: straight to the console


async def test_sign_in_posted_from_another_site_is_refused(server: Server, browser: aiohttp.ClientSession) -> None:
    status, _, resp = await post_form(
        browser, server, SIGN_IN, {"key": server.api_key}, headers={"Origin": "https://evil.example"}
    )
    assert status == 403 and "Set-Cookie" not in resp.headers
    status, _, _ = await post_form(browser, server, SIGN_IN, {"key": server.api_key}, headers={"Origin": server.url})
    assert status == 303


# --- the cookie on /v1 ------------------------------------------------------------------------


async def test_v1_reads_work_with_the_cookie(server: Server, browser: aiohttp.ClientSession) -> None:
    run = await server.create_run()
    await sign_in(browser, server)
    _, by_header = await server.request("GET", "/v1/runs")
    status, page = await get(browser, server, "/v1/runs")
    assert status == 200 and page == by_header and run["id"] in [r["id"] for r in page["data"]]
    status, body = await get(browser, server, f"/v1/runs/{run['id']}?expand=transcript")
    assert status == 200 and body["transcript"] == []
    status, text = await get(browser, server, f"/v1/runs/{run['id']}/transcript?format=txt")
    assert status == 200 and isinstance(text, str)


async def test_cookie_posts_without_the_csrf_header_are_403_and_change_nothing(
    server: Server, browser: aiohttp.ClientSession
) -> None:
    run = await server.create_run()
    bp = server.extra["blueprint_id"]
    runs_before = (await server.request("GET", "/v1/runs"))[1]
    blueprints_before = (await server.request("GET", "/v1/blueprints"))[1]
    await sign_in(browser, server)
    attempts = [
        ("POST", "/v1/runs", {"blueprint_id": bp, "channel_id": server.chat_channel_id}),
        ("POST", f"/v1/runs/{run['id']}/cancel", None),
        ("POST", "/v1/blueprints", BLUEPRINT),
        ("PATCH", f"/v1/blueprints/{bp}", BLUEPRINT),
    ]
    for method, path, body in attempts:
        async with browser.request(method, server.url + path, json=body) as resp:
            assert resp.status == 403, (method, path)
            assert (await resp.json())["error"]["type"] == "forbidden"
    assert (await server.request("GET", "/v1/runs"))[1] == runs_before
    assert (await server.request("GET", "/v1/blueprints"))[1] == blueprints_before
    assert (await server.get_run(run["id"]))["status"] == "pending"

    # the console's own requests carry the header, and a key in a header does not need it
    headers = {"X-Requested-With": "vivavoce-console"}
    async with browser.post(server.url + f"/v1/runs/{run['id']}/cancel", headers=headers) as resp:
        assert resp.status == 200 and (await resp.json())["status"] == "cancelled"
    status, created = await server.request("POST", "/v1/runs", json=attempts[0][2])
    assert status == 201, created


async def test_a_header_key_wins_over_the_cookie(server: Server, browser: aiohttp.ClientSession) -> None:
    await sign_in(browser, server)
    status, body = await get(browser, server, "/v1/runs", headers={"Authorization": "Bearer vv_wrong"})
    assert status == 401 and body["error"]["type"] == "unauthorized"


# --- pages, headers and junk ------------------------------------------------------------------


async def test_pages_send_safe_headers(server: Server, browser: aiohttp.ClientSession) -> None:
    run = await server.create_run()
    async with browser.get(server.url + SIGN_IN) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Security-Policy"].startswith("default-src 'self'")
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
    await sign_in(browser, server)
    for path in ("/console", f"/console/runs/{run['id']}"):
        async with browser.get(server.url + path) as resp:
            assert resp.status == 200 and resp.content_type == "text/html"
            csp = resp.headers["Content-Security-Policy"]
            assert "default-src 'self'" in csp and "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
            assert resp.headers["X-Content-Type-Options"] == "nosniff"
    for name, ctype in (("console.js", "text/javascript"), ("console.css", "text/css")):
        async with browser.get(f"{server.url}/console/assets/{name}") as resp:
            assert resp.status == 200 and resp.content_type == ctype
            assert resp.headers["X-Content-Type-Options"] == "nosniff"
    script = (await get(browser, server, "/console/assets/console.js"))[1]
    assert (
        "innerHTML" not in script
        and "insertAdjacentHTML" not in script
        and "http" not in script.replace("http://www.w3.org/2000/svg", "")
    )  # nothing loaded from elsewhere; no markup built from strings


async def test_junk_input_is_a_client_error_never_a_500(server: Server, browser: aiohttp.ClientSession) -> None:
    await sign_in(browser, server)
    other_org = await server.state.store.catalog.create_organization("other")
    other_key = await server.state.store.catalog.create_api_key(other_org)
    foreign_run = (await server.create_run())["id"]
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as other:
        await post_form(other, server, SIGN_IN, {"key": other_key})
        status, page = await get(other, server, f"/console/runs/{foreign_run}")
        assert status == 404 and "no run" in page  # another organization's run is not there

    for path, expected in (
        ("/console/runs/run_nope", 404),
        ("/console/runs/%3Cscript%3E", 404),
        ("/console/runs/run_00000000000000000000000000", 404),
        ("/console?status=bogus&limit=abc&starting_after=%00", 200),  # the page shows the API's 400 message
        ("/console/assets/..%2Fapp.py", 404),
        ("/console/assets/join.js", 404),
        (SIGN_IN + "?next=%0d%0aSet-Cookie:x=1", 303),
        ("/v1/runs?status=bogus", 400),
        ("/v1/runs?limit=1000", 400),
        ("/v1/runs/run_nope", 404),
    ):
        status, body = await get(browser, server, path)
        assert status == expected, (path, status, body)
        assert "<script>" not in str(body)

    # forms: oversized, wrong content type, repeated and binary fields
    async with aiohttp.ClientSession() as anonymous:
        status, _, _ = await post_form(anonymous, server, SIGN_IN, {"key": "k" * 300_000})
        assert status == 413
        status, _, _ = await post_form(anonymous, server, SIGN_IN, "key=vv_x", headers={"Content-Type": "text/plain"})
        assert status == 415  # not a form: unsupported media type
        form = {"Content-Type": "application/x-www-form-urlencoded"}
        status, _, _ = await post_form(anonymous, server, SIGN_IN, b"key=%ff%fe&key=2&next=%00", headers=form)
        assert status in (400, 401)
        form = aiohttp.FormData()
        form.add_field("key", b"\x00\x01", filename="key.bin")
        status, _, _ = await post_form(anonymous, server, SIGN_IN, form)
        assert status == 400
        async with anonymous.get(server.url + "/console/sign-out", allow_redirects=False) as resp:
            assert resp.status == 405
