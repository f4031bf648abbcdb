"""The participant's chat page in a real headless Chromium (Debian's /usr/bin/chromium, driven by Playwright)."""

from __future__ import annotations

from typing import Any

from tests.browser.conftest import requires_chromium, screenshot
from tests.conftest import LONG_ANSWER, UNIT, Server

pytestmark = requires_chromium


async def answer(page: Any, text: str) -> None:
    await page.fill("#input", text)
    await page.keyboard.press("Enter")


async def test_chat_interview_completed_by_typing_in_the_page(server: Server, page: Any) -> None:
    run = await server.create_run()
    await page.goto(run["join_url"])
    messages = page.locator("#messages")
    timeout = 10_000 * UNIT
    await messages.get_by_text("What do you do for a living?").wait_for(timeout=timeout)
    await answer(page, "I teach <script>alert(1)</script>")  # short: earns the probe
    await messages.get_by_text("What do you like about it?").wait_for(timeout=timeout)
    # participant text is shown as text, never as markup
    assert await page.locator("#messages script").count() == 0
    await messages.get_by_text("<script>alert(1)</script>", exact=False).wait_for(timeout=timeout)
    for question in ("Where do you live?", "What did you eat today?"):
        await answer(page, LONG_ANSWER)
        await messages.get_by_text(question).wait_for(timeout=timeout)
    await answer(page, LONG_ANSWER)
    end = page.locator("#end")
    await end.wait_for(state="visible", timeout=timeout)
    assert "Thank you" in await page.inner_text("#end-text")
    assert await page.locator("#input").is_disabled()
    await screenshot(page, "join-chat-completed")

    done = await server.get_run(run["id"], "transcript")
    assert done["status"] == "completed"
    users = [m["content"] for m in done["transcript"] if m["role"] == "user"]
    assert users[0] == "I teach <script>alert(1)</script>" and users[1:] == [LONG_ANSWER] * 3
    assert all(m["client_id"] for m in done["transcript"] if m["role"] == "user")


async def test_a_finished_run_shows_a_friendly_page(server: Server, page: Any) -> None:
    run = await server.create_run()
    status, _ = await server.request("POST", f"/v1/runs/{run['id']}/cancel")
    assert status == 200
    response = await page.goto(run["join_url"])
    assert response is not None and response.status == 200
    assert "cancelled by the researcher" in await page.inner_text("main")
