"""A researcher reviews a run in the console, in a real headless Chromium: annotates it, corrects what the
participant said (the transcript shows the correction, the recognised text beside it), reports and moves issues."""

from __future__ import annotations

import json
from typing import Any

from tests.browser.test_console_page import (  # noqa: F401  (page: a fixture)
    ARTIFACTS,
    SCRIPT_ANSWER,
    complete_chat_run,
    page,
    pytestmark,
    sign_in,
)
from tests.conftest import Server

CORRECTED = "I teach <b>chemistry</b> & physics"  # markup in a correction stays text too


async def in_force(server: Server, run_id: str) -> list[dict[str, Any]]:
    return [i for i in (await server.get_run(run_id, "issues"))["issues"] if i["applied"]]


async def test_a_researcher_annotates_a_run_corrects_a_message_and_works_through_issues(
    server: Server,
    page: Any,  # noqa: F811
) -> None:
    run = await server.create_run(participant={"name": "Ada"})
    await complete_chat_run(server, run)
    stored = (await server.get_run(run["id"], "transcript"))["transcript"]
    heard = next(m for m in stored if m["role"] == "user" and m["content"] == SCRIPT_ANSWER)
    probe = next(m for m in stored if m["kind"] == "probe")
    me = (await server.state.store.catalog.key_for(server.api_key) or ("", ""))[1]

    await sign_in(page, server, f"/console/runs/{run['id']}")
    await page.locator("#run-view").wait_for()
    await page.get_by_text("No issues.").wait_for()

    # the annotation
    await page.get_by_label("critical").check()
    await page.get_by_role("button", name="Save annotation").click()
    await page.get_by_text("Annotated as critical.").wait_for()
    got = await server.get_run(run["id"])
    assert (got["annotation"], got["annotated_by"]) == ("critical", me)
    assert me in await page.inner_text("#annotation-by")

    # correct what the participant said: the line's Review button opens a form holding the recognised text
    line = page.locator(f'#transcript .line[data-message-id="{heard["id"]}"]')
    await line.get_by_role("button", name="Review this message").click()
    text = line.get_by_label("Corrected text")
    assert await text.input_value() == SCRIPT_ANSWER and await text.evaluate("t => t === document.activeElement")
    await line.get_by_role("button", name="Save correction").click()
    await page.get_by_role("alert").filter(has_text="The text is unchanged.").wait_for()
    await text.fill(CORRECTED)
    await line.get_by_label("Why (optional)").fill("the recogniser dropped the subject")
    await line.get_by_role("button", name="Save correction").click()
    await page.get_by_text("Correction saved").wait_for()
    assert await line.get_by_role("button", name="Review this message").evaluate("b => b === document.activeElement")
    assert await line.locator(".review-form-wrap").count() == 0  # done: the form closed
    assert await line.locator(".content").first.inner_text() == CORRECTED
    assert await line.locator(".flag-corrected").inner_text() == "corrected"
    await line.get_by_text("Recognised text").click()
    assert await line.locator("details.original .content").inner_text() == SCRIPT_ANSWER
    assert await page.locator("#transcript b, #transcript script").count() == 0
    assert await page.evaluate("window.__pwned") is None

    # the API and the downloads say the same
    applied = await in_force(server, run["id"])
    assert [(i["message_id"], i["correction"], i["created_by"]) for i in applied] == [(heard["id"], CORRECTED, me)]
    shown = (await server.get_run(run["id"], "transcript"))["transcript"]
    assert next(m for m in shown if m["id"] == heard["id"])["original_content"] == SCRIPT_ANSWER
    txt = await page.evaluate(
        "async () => (await fetch(document.querySelector('#downloads a[data-format=txt]').href)).text()"
    )
    assert f"Participant: {CORRECTED} [corrected]" in txt
    issue = page.locator(f'#issues li[data-issue-id="{applied[0]["id"]}"]')
    assert await issue.get_attribute("data-status") == "approved"
    assert "in force" in await issue.inner_text() and CORRECTED in await issue.inner_text()

    # report an issue with an interviewer message, then reject it
    probe_line = page.locator(f'#transcript .line[data-message-id="{probe["id"]}"]')
    await probe_line.get_by_role("button", name="Review this message").click()
    assert await probe_line.get_by_label("Corrected text").count() == 0  # only a participant's words are corrected
    assert await probe_line.get_by_label("Issue").input_value() == "message"
    await probe_line.get_by_label("Priority").select_option("high")
    await probe_line.get_by_label("Note").fill("A leading follow-up")
    await probe_line.get_by_role("button", name="Report issue").click()
    await page.get_by_text("Issue reported.").wait_for()
    _, listed = await server.request("GET", f"/v1/runs/{run['id']}/issues?type=message")
    reported = listed["data"][0]
    assert (reported["message_id"], reported["priority"]) == (probe["id"], "high")
    assert reported["note"] == "A leading follow-up"
    item = page.locator(f'#issues li[data-issue-id="{reported["id"]}"]')
    assert await probe_line.locator(".flag", has_text="1 issue").count() == 1
    await item.locator('button[data-action="rejected"]').click()
    await page.get_by_text("Issue rejected.").wait_for()
    assert await item.get_attribute("data-status") == "rejected"
    assert [await b.get_attribute("data-action") for b in await item.locator("button").all()] == [
        "open", "approved", "closed",
    ]  # fmt: skip

    # the server's refusals are shown: a rival correction of the same words cannot be approved beside the first
    proposal = {"type": "transcriber", "message_id": heard["id"], "correction": "I teach"}
    _, rival = await server.request("POST", f"/v1/runs/{run['id']}/issues", json=proposal)
    await page.reload()
    await page.locator(f'#issues li[data-issue-id="{rival["id"]}"] button[data-action="approved"]').click()
    await page.get_by_role("alert").filter(has_text="already has an approved correction").wait_for()
    assert [i["id"] for i in await in_force(server, run["id"])] == [applied[0]["id"]]

    # withdrawing the correction shows the recognised text again
    await line.get_by_role("button", name="Review this message").click()
    await line.get_by_role("button", name="Withdraw correction").click()
    await page.get_by_text("Correction withdrawn").wait_for()
    assert await line.locator(".content").first.inner_text() == SCRIPT_ANSWER
    assert await line.locator(".flag-corrected").count() == 0
    assert await in_force(server, run["id"]) == []

    # an issue with the whole run
    await page.get_by_text("Report an issue with the whole run").click()
    await page.locator("#run-issue-note").fill("The participant seemed to be reading from a script")
    await page.get_by_role("button", name="Report issue").last.click()
    await page.get_by_text("Issue reported.").wait_for()
    _, runs_only = await server.request("GET", f"/v1/runs/{run['id']}/issues?type=run")
    assert runs_only["data"][0]["note"] == "The participant seemed to be reading from a script"
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "console-review.png"), full_page=True)

    # the runs list shows the annotation
    await page.goto(server.url + "/console")
    row = page.locator(f'#runs tr[data-run-id="{run["id"]}"]')
    await row.wait_for()
    assert (await row.locator("td").all_inner_texts())[5] == "critical"
    # clearing it from the run's page
    await page.goto(server.url + f"/console/runs/{run['id']}")
    await page.get_by_label("not annotated").check()
    await page.get_by_role("button", name="Save annotation").click()
    await page.get_by_text("Annotation cleared.").wait_for()
    assert (await server.get_run(run["id"]))["annotation"] is None
    events = await server.request("GET", f"/v1/runs/{run['id']}/events", headers={"Accept": "application/json"})
    kinds = [e["type"] for e in events[1]["data"]]
    assert kinds.count("run.annotated") == 2 and kinds.count("run.issue.created") == 4
    assert json.dumps(events[1]).count(me) >= 6  # every change says who made it: the signed-in key
