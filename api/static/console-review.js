// A run's review in the researcher console: its annotation, its issues, and on every message of the transcript a
// Review button to correct what a participant said or report an issue. Writes go to the public /v1 API with the
// console's cookie and the X-Requested-With header its CSRF rule asks for (docs/api.md). As in console.js, every
// piece of data reaches the DOM as text (text nodes, attributes, form values), never through an HTML parser.
"use strict";

// Where an issue's status may go (runtime/review.py TRANSITIONS), and the button that takes it there.
const NEXT = {
  open: ["approved", "rejected", "closed"],
  approved: ["open", "rejected", "closed"],
  rejected: ["open", "approved", "closed"],
  closed: ["open"],
};
const ACTION = { approved: "Approve", rejected: "Reject", closed: "Close", open: "Reopen" };
const DONE = { approved: "Issue approved.", rejected: "Issue rejected.", closed: "Issue closed.", open: "Issue reopened." };
const TYPE_NAMES = {
  transcriber: "transcription",
  message: "interviewer message",
  tool_call: "tool call",
  end_of_sentence: "end of turn",
  run: "the whole run",
  interruption: "interruption",
};
const TYPES_FOR = {
  user: ["transcriber", "end_of_sentence", "interruption"],
  assistant: ["message", "interruption", "end_of_sentence", "tool_call"],
};
const PRIORITIES = ["low", "medium", "high"];

let current = null; // { run, h: helpers from console.js }
let bound = false;

// --- the API ----------------------------------------------------------------------------------------------------

async function send(method, path, body) {
  const headers = { Accept: "application/json", "X-Requested-With": "vivavoce-console" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method,
    credentials: "same-origin",
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (response.status === 401) {
    location.assign("/console/sign-in?next=" + encodeURIComponent(location.pathname + location.search));
    throw new Error("You are signed out: sign in again.");
  }
  let data = null;
  try {
    data = await response.json();
  } catch {
    data = null;
  }
  if (!response.ok) {
    throw new Error(data && data.error && data.error.message ? data.error.message : `HTTP ${response.status}`);
  }
  return data;
}

const runPath = () => `/v1/runs/${encodeURIComponent(current.run.id)}`;

// --- feedback ---------------------------------------------------------------------------------------------------

function notify(text) {
  document.getElementById("review-notice").textContent = text;
  const error = document.getElementById("review-error");
  error.hidden = true;
  error.textContent = "";
}

function fail(error) {
  const box = document.getElementById("review-error");
  box.textContent = error instanceof Error ? error.message : String(error);
  box.hidden = false;
  document.getElementById("review-notice").textContent = "";
}

// Run an action from a button or form: its control is disabled meanwhile (no double submission), errors are said.
async function act(control, action) {
  control.disabled = true;
  try {
    await action();
    return true;
  } catch (error) {
    fail(error);
    return false;
  } finally {
    control.disabled = false;
  }
}

// Read the run again (its transcript as corrected, its issues and annotation) and redraw what review shows.
async function reload(message) {
  const fresh = await send("GET", `${runPath()}?expand=transcript&expand=issues`);
  current.run = { ...current.run, ...fresh };
  for (const m of current.run.transcript || []) {
    const content = document.querySelector(`#transcript .line[data-message-id="${m.id}"] .content`);
    if (content) content.textContent = m.content;
  }
  render();
  notify(message);
}

// --- drawing ----------------------------------------------------------------------------------------------------

export function showReview(run, helpers) {
  current = { run, h: helpers };
  if (!bound) {
    bindStaticForms();
    bound = true;
  }
  render();
}

function render() {
  const erased = Boolean(current.run.erased_at);
  for (const id of ["annotation-form", "run-issue"]) document.getElementById(id).hidden = erased;
  if (erased) notify("This run's data was erased: it has no review any more.");
  renderAnnotation();
  renderIssues();
  if (!erased) decorateLines();
}

function renderAnnotation() {
  const { run, h } = current;
  const value = run.annotation || "";
  for (const input of document.querySelectorAll('#annotation-form input[name="annotation"]')) {
    input.checked = input.value === value;
  }
  const by = document.getElementById("annotation-by");
  by.replaceChildren(...(run.annotation ? ["Set by ", h.el("code", {}, run.annotated_by), " on ", h.timeNode(run.annotated_at)] : []));
}

function messageOf(id) {
  return (current.run.transcript || []).find((m) => m.id === id);
}

function excerpt(text, limit = 90) {
  return text.length > limit ? `${text.slice(0, limit - 1)}…` : text;
}

function renderIssues() {
  const { run, h } = current;
  const { el } = h;
  const list = document.getElementById("issues");
  const issues = run.issues || [];
  if (issues.length === 0) {
    list.replaceChildren(el("li", { class: "empty" }, "No issues."));
    return;
  }
  list.replaceChildren(
    ...issues.map((issue) => {
      const item = el("li", { class: `issue issue-${issue.status}`, "data-issue-id": issue.id, "data-status": issue.status });
      item.append(
        el("div", { class: "issue-head" },
          el("strong", {}, TYPE_NAMES[issue.type] || issue.type),
          el("span", { class: `issue-status issue-status-${issue.status}` }, issue.status),
          el("span", { class: "hint" }, `${issue.priority} priority`),
          issue.applied ? el("span", { class: "flag" }, "in force") : ""),
      );
      const message = issue.message_id ? messageOf(issue.message_id) : null;
      if (message) {
        const said = message.original_content ?? message.content;
        item.append(el("p", {}, "On ", el("a", { href: `#line-${message.id}` }, `“${excerpt(said)}”`)));
      }
      if (issue.correction !== null) {
        item.append(el("p", { class: "issue-correction" }, "Correction: ", el("q", {}, issue.correction)));
        if (issue.correction_reason) item.append(el("p", { class: "hint" }, `Why: ${issue.correction_reason}`));
      }
      if (issue.note) item.append(el("p", { class: "issue-note" }, issue.note));
      const who = el("p", { class: "hint" }, "Opened by ", el("code", {}, issue.created_by), " on ", h.timeNode(issue.created_at));
      if (issue.updated_at !== issue.created_at) who.append("; changed by ", el("code", {}, issue.updated_by), " on ", h.timeNode(issue.updated_at));
      if (issue.approved_by) who.append("; approved by ", el("code", {}, issue.approved_by));
      item.append(who);
      const actions = el("div", { class: "issue-actions" });
      for (const status of NEXT[issue.status]) {
        const button = el("button", { type: "button", "data-action": status, "aria-label": `${ACTION[status]}: ${TYPE_NAMES[issue.type]} issue` }, ACTION[status]);
        button.addEventListener("click", () =>
          act(button, async () => {
            await send("PATCH", `${runPath()}/issues/${encodeURIComponent(issue.id)}`, { status });
            await reload(DONE[status]);
          }),
        );
        actions.append(button);
      }
      item.append(actions);
      return item;
    }),
  );
}

// --- per message ------------------------------------------------------------------------------------------------

function decorateLines() {
  const { el } = current.h;
  const issuesOn = new Map();
  for (const issue of current.run.issues || []) {
    if (issue.message_id && (issue.status === "open" || issue.status === "approved")) {
      issuesOn.set(issue.message_id, (issuesOn.get(issue.message_id) || 0) + 1);
    }
  }
  for (const line of document.querySelectorAll("#transcript .line[data-message-id]")) {
    const message = messageOf(line.dataset.messageId);
    if (!message || !TYPES_FOR[message.role]) continue;
    const wasOpen = Boolean(line.querySelector(".review-form-wrap"));
    for (const old of line.querySelectorAll(".review-bit")) old.remove();
    line.id = `line-${message.id}`;
    const meta = line.querySelector(".line-meta");
    if (message.original_content !== null && message.original_content !== undefined) {
      meta.append(el("span", { class: "flag flag-corrected review-bit" }, "corrected"));
      line.querySelector(".content").after(
        el("details", { class: "original review-bit" }, el("summary", {}, "Recognised text"),
          el("p", { class: "content" }, message.original_content)),
      );
    }
    const count = issuesOn.get(message.id);
    if (count) meta.append(el("span", { class: "flag review-bit" }, `${count} issue${count === 1 ? "" : "s"}`));
    const toggle = el("button", { type: "button", class: "review-toggle review-bit", "aria-expanded": "false",
      "aria-controls": `review-${message.id}`, "aria-label": "Review this message" }, "Review");
    toggle.addEventListener("click", () => {
      const open = line.querySelector(".review-form-wrap");
      if (open) {
        open.remove();
        toggle.setAttribute("aria-expanded", "false");
      } else {
        line.append(reviewForms(message, toggle));
        toggle.setAttribute("aria-expanded", "true");
        line.querySelector(".review-form-wrap textarea, .review-form-wrap select").focus();
      }
    });
    meta.append(toggle);
    if (wasOpen) {
      line.append(reviewForms(message, toggle));
      toggle.setAttribute("aria-expanded", "true");
    }
  }
}

function field(id, label, control) {
  const { el } = current.h;
  control.id = id;
  return [el("label", { for: id }, label), control];
}

function select(name, values, names = {}) {
  const { el } = current.h;
  return el("select", { name }, ...values.map((v) => el("option", { value: v }, names[v] || v)));
}

function reviewForms(message, toggle) {
  const { el } = current.h;
  const wrap = el("div", { class: "review-form-wrap review-bit", id: `review-${message.id}`, role: "group",
    "aria-label": "Review this message" });
  const done = async (text) => {
    wrap.remove(); // this message's review is done; forms open on other lines stay open
    await reload(text);
    document.querySelector(`#line-${message.id} .review-toggle`)?.focus();
  };
  if (message.role === "user") {
    const issue = (current.run.issues || []).find((i) => i.id === message.correction_id);
    const text = el("textarea", { name: "correction", rows: 3, maxlength: 32768, required: "" });
    text.value = message.content;
    const reason = el("input", { name: "correction_reason", maxlength: 2000 });
    reason.value = (issue && issue.correction_reason) || "";
    const save = el("button", { type: "submit" }, "Save correction");
    const form = el("form", { class: "review-form correct-form" },
      el("p", { class: "form-title" }, "Correct what the participant said"),
      ...field(`${message.id}-correction`, "Corrected text", text),
      ...field(`${message.id}-reason`, "Why (optional)", reason),
      save);
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      act(save, async () => {
        const said = text.value;
        if (!said.trim()) throw new Error("Write the corrected text.");
        const body = { correction: said, correction_reason: reason.value.trim() || null, status: "approved" };
        if (message.correction_id) {
          if (said === message.original_content) throw new Error("That is the recognised text: withdraw the correction instead.");
          await send("PATCH", `${runPath()}/issues/${encodeURIComponent(message.correction_id)}`, body);
        } else {
          if (said === message.content) throw new Error("The text is unchanged.");
          if (body.correction_reason === null) delete body.correction_reason;
          await send("POST", `${runPath()}/issues`, { type: "transcriber", message_id: message.id, ...body });
        }
        await done("Correction saved: the transcript and exports show it; the recognised text is kept.");
      });
    });
    wrap.append(form);
    if (message.correction_id) {
      const withdraw = el("button", { type: "button", class: "withdraw" }, "Withdraw correction");
      withdraw.addEventListener("click", () =>
        act(withdraw, async () => {
          await send("PATCH", `${runPath()}/issues/${encodeURIComponent(message.correction_id)}`, { status: "closed" });
          await done("Correction withdrawn: the transcript shows the recognised text again.");
        }),
      );
      form.append(withdraw);
    }
  }
  const type = select("type", TYPES_FOR[message.role], TYPE_NAMES);
  const priority = select("priority", PRIORITIES);
  priority.value = "medium";
  const note = el("textarea", { name: "note", rows: 2, maxlength: 4000 });
  const report = el("button", { type: "submit" }, "Report issue");
  const form = el("form", { class: "review-form issue-form" },
    el("p", { class: "form-title" }, "Report an issue with this message"),
    ...field(`${message.id}-type`, "Issue", type),
    ...field(`${message.id}-priority`, "Priority", priority),
    ...field(`${message.id}-note`, "Note", note),
    report);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    act(report, async () => {
      const body = { type: type.value, message_id: message.id, priority: priority.value };
      if (note.value.trim()) body.note = note.value;
      await send("POST", `${runPath()}/issues`, body);
      await done("Issue reported.");
    });
  });
  const cancel = el("button", { type: "button", class: "cancel" }, "Cancel");
  cancel.addEventListener("click", () => {
    wrap.remove();
    toggle.setAttribute("aria-expanded", "false");
    toggle.focus();
  });
  wrap.append(form, cancel);
  return wrap;
}

// --- the panel's own forms --------------------------------------------------------------------------------------

function bindStaticForms() {
  const annotation = document.getElementById("annotation-form");
  annotation.addEventListener("submit", (event) => {
    event.preventDefault();
    const chosen = annotation.querySelector('input[name="annotation"]:checked');
    act(annotation.querySelector("button"), async () => {
      const value = chosen && chosen.value ? chosen.value : null;
      await send("PATCH", runPath(), { annotation: value });
      await reload(value ? `Annotated as ${value}.` : "Annotation cleared.");
    });
  });
  const runIssue = document.getElementById("run-issue-form");
  runIssue.addEventListener("submit", (event) => {
    event.preventDefault();
    const note = document.getElementById("run-issue-note");
    act(runIssue.querySelector("button"), async () => {
      const priority = document.getElementById("run-issue-priority").value;
      await send("POST", `${runPath()}/issues`, { type: "run", priority, note: note.value });
      note.value = "";
      document.getElementById("run-issue").open = false;
      await reload("Issue reported.");
    });
  });
}
