"""The researcher console: a run viewer at ``/console`` that reads the public ``/v1`` API.

Signing in validates an API key exactly like the API does and stores it in an
HttpOnly, SameSite=Strict cookie (:data:`api.auth.CONSOLE_COOKIE`); the auth
middleware accepts that cookie on ``/v1`` (state-changing methods also need the
``X-Requested-With`` header, see :mod:`api.auth`). The pages themselves carry no
data: ``static/console.js`` fetches runs from ``/v1`` and builds the DOM with
``textContent`` only, so participant text can never become markup; ``static/console-review.js``
(a module it imports) annotates a run, opens and moves its issues, and corrects messages, the same way.

Every page is sent with a Content-Security-Policy that allows nothing but this
server (no inline scripts or styles), ``nosniff``, and ``frame-ancestors 'none'``.
"""

from __future__ import annotations

import html
import re
from pathlib import Path
from urllib.parse import quote, urlsplit

from aiohttp import web
from pydantic import BaseModel, Field

from api.auth import CONSOLE_COOKIE, cookie_key
from api.errors import NOT_BLANK, SPACES
from api.openapi import Param, RouteTable
from api.state import STATE
from runtime.errors import NotFound
from runtime.ids import is_id

routes = RouteTable()

STATIC_DIR = Path(__file__).parent / "static"
ASSETS = {"console.js": "text/javascript", "console-review.js": "text/javascript", "console.css": "text/css"}
CSP = (
    "default-src 'self'; img-src 'self' data:; media-src 'self'; object-src 'none'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SAFE_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
SIGN_IN = "/console/sign-in"
MAX_KEY_CHARS = 200  # issued keys are 46 characters; anything far longer is not one
NEXT_RE = re.compile(r"^/console(/runs/[a-z0-9_]{1,40})?(\?[A-Za-z0-9_=&%.\-]{0,300})?$")
RUN_ID = Param("id", "Run id", where="path")


_TRIM = re.compile(f"^[{SPACES}]+|[{SPACES}]+$")


class SignInForm(BaseModel):
    """The sign-in form's fields."""

    key: str = Field(min_length=1, pattern=NOT_BLANK, description="An API key")
    next: str | None = Field(None, description="Console page to return to")


def _safe_next(value: object) -> str:
    """Where to go after signing in: only a console page of this server (no open redirect)."""
    return value if isinstance(value, str) and NEXT_RE.match(value) else "/console"


def _same_origin(request: web.Request) -> bool:
    """A browser's cross-site form post carries another Origin; clients that send none are not browsers."""
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    return urlsplit(origin).netloc == request.host


async def _signed_in(request: web.Request) -> str | None:
    """The organization of the key in the console cookie, if it is still a valid key."""
    key = cookie_key(request)
    if key is None or len(key) > MAX_KEY_CHARS:
        return None
    return await request.app[STATE].store.catalog.org_for_key(key)


def _redirect(location: str) -> web.Response:
    return web.Response(status=303, headers={**SAFE_HEADERS, "Location": location})


def _to_sign_in(request: web.Request) -> web.Response:
    response = _redirect(f"{SIGN_IN}?next={quote(_safe_next(request.path_qs), safe='')}")
    if CONSOLE_COOKIE in request.cookies:  # a stale cookie (revoked or mistyped key) goes away
        response.del_cookie(CONSOLE_COOKIE, path="/")
    return response


def _html(text: str, status: int = 200) -> web.Response:
    return web.Response(text=text, status=status, content_type="text/html", headers=SAFE_HEADERS)


def _sign_in_page(*, next_path: str, error: str | None = None, status: int = 200) -> web.Response:
    alert = f"<p class='form-error' id='sign-in-error' role='alert'>{html.escape(error)}</p>" if error else ""
    described = " aria-describedby='sign-in-error' aria-invalid='true'" if error else ""
    text = (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        "<title>Sign in · vivavoce console</title><link rel='stylesheet' href='/console/assets/console.css'></head>"
        "<body><main id='main' class='sign-in'><h1>vivavoce console</h1>"
        "<p>Sign in with an API key to view your organization's runs.</p>"
        f"{alert}<form method='post' action='{SIGN_IN}' class='sign-in-form'>"
        f"<input type='hidden' name='next' value='{html.escape(next_path)}'>"
        "<label for='key'>API key</label>"
        f"<input id='key' name='key' type='password' autocomplete='current-password' required"
        f" maxlength='{MAX_KEY_CHARS}' spellcheck='false' autofocus{described}>"
        "<button type='submit'>Sign in</button></form>"
        "<p class='hint'>The key is kept in an HttpOnly cookie for this browser session; "
        "<code>vivavoce keys create</code> makes a new one.</p></main></body></html>"
    )
    return _html(text, status)


def _not_found_page(message: str) -> web.Response:
    text = (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        "<title>Not found · vivavoce console</title><link rel='stylesheet' href='/console/assets/console.css'></head>"
        f"<body><main id='main' class='sign-in'><h1>Not found</h1><p>{html.escape(message)}</p>"
        "<p><a href='/console'>All runs</a></p></main></body></html>"
    )
    return _html(text, 404)


def _app_page() -> web.Response:
    return _html((STATIC_DIR / "console.html").read_text(encoding="utf-8"))


@routes.route("GET", "/", summary="The server's front door: to the researcher console", tag="console", auth=False,
              status=303, content_types=())  # fmt: skip
async def front_door(request: web.Request) -> web.Response:
    return _redirect("/console")


@routes.route("GET", "/console", summary="Researcher console: the runs list (signs in first)", tag="console",
              auth=False, content_types=("text/html",), also=(303,),
              params=(Param("status", "Status filter"), Param("starting_after", "Page cursor"),
                      Param("blueprint_id", "One blueprint's runs, with its study exports")))  # fmt: skip
async def console_runs(request: web.Request) -> web.Response:
    if await _signed_in(request) is None:
        return _to_sign_in(request)
    return _app_page()  # the page reads its query string itself and asks /v1/runs, which validates it


@routes.route("GET", "/console/runs/{id}", summary="Researcher console: one run", tag="console", auth=False,
              content_types=("text/html",), also=(303,), errors=(404,), error_type="text/html",
              params=(RUN_ID,))  # fmt: skip
async def console_run(request: web.Request) -> web.Response:
    org_id = await _signed_in(request)
    if org_id is None:
        return _to_sign_in(request)
    run_id = request.match_info["id"]
    if not is_id(run_id, "run"):
        return _not_found_page("There is no run with this id.")
    try:
        await request.app[STATE].store.runs.get_run(run_id, org_id=org_id)
    except NotFound:
        return _not_found_page("There is no run with this id.")
    return _app_page()


@routes.route("GET", SIGN_IN, summary="Researcher console: the sign-in form", tag="console", auth=False,
              content_types=("text/html",), also=(303,),
              params=(Param("next", "Console page to return to"),))  # fmt: skip
async def sign_in_form(request: web.Request) -> web.Response:
    next_path = _safe_next(request.query.get("next"))
    if await _signed_in(request) is not None:
        return _redirect(next_path)
    return _sign_in_page(next_path=next_path)


@routes.route("POST", SIGN_IN, summary="Researcher console: sign in with an API key (sets an HttpOnly cookie)",
              tag="console", auth=False, status=303, content_types=(), errors=(401, 403, 415), error_type="text/html",
              body=SignInForm, body_types=("application/x-www-form-urlencoded",))  # fmt: skip
async def sign_in(request: web.Request) -> web.Response:
    if not _same_origin(request):
        return _html("<!doctype html><title>Forbidden</title><p>Sign in from this server's own page.</p>", 403)
    if request.content_type not in ("application/x-www-form-urlencoded", "multipart/form-data"):
        return _sign_in_page(next_path="/console", error="Sign in with the form.", status=415)
    try:
        form = await request.post()
    except ValueError:  # a multipart type without its boundary, or a body that is not what it says
        return _sign_in_page(next_path="/console", error="Sign in with the form.", status=400)
    raw_key, raw_next = form.get("key"), form.get("next")
    # trimmed of what JSON Schema calls space, as the document says: Python's strip() also takes \x1c-\x1f
    key = _TRIM.sub("", raw_key) if isinstance(raw_key, str) else ""
    next_path = _safe_next(raw_next)
    if not key:
        return _sign_in_page(next_path=next_path, error="Enter an API key.", status=400)
    org_id = None if len(key) > MAX_KEY_CHARS else await request.app[STATE].store.catalog.org_for_key(key)
    if org_id is None:
        return _sign_in_page(next_path=next_path, error="That API key is not valid.", status=401)
    response = _redirect(next_path)
    secure = request.secure or request.app[STATE].config.base_url.startswith("https://")
    response.set_cookie(CONSOLE_COOKIE, key, path="/", httponly=True, samesite="Strict", secure=secure)
    return response


@routes.route("POST", "/console/sign-out", summary="Researcher console: sign out (clears the cookie)", tag="console",
              auth=False, status=303, content_types=(), errors=(403,), error_type="text/html")  # fmt: skip
async def sign_out(request: web.Request) -> web.Response:
    if not _same_origin(request):  # another site cannot sign the researcher out either
        return _html("<!doctype html><title>Forbidden</title><p>Sign out from this server's own page.</p>", 403)
    response = _redirect(SIGN_IN)
    response.del_cookie(CONSOLE_COOKIE, path="/")
    return response


@routes.route("GET", "/console/assets/{name}", summary="Researcher console: script and style", tag="console",
              auth=False, content_types=("text/javascript", "text/css"), errors=(404,),
              params=(Param("name", "Asset file name", where="path"),))  # fmt: skip
async def console_asset(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name not in ASSETS:
        raise web.HTTPNotFound(text=f"no asset {name[:80]!r}")
    return web.Response(
        body=(STATIC_DIR / name).read_bytes(),
        content_type=ASSETS[name],
        headers={"X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"},
    )
