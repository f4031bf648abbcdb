// The researcher console: reads the public /v1 API (signed in by an HttpOnly cookie) and draws the runs list
// and a run's page. Every piece of data reaches the DOM through text nodes, attributes or createElementNS,
// never through an HTML parser, so participant text stays text. A module: the run's review lives in its own.
"use strict";

import { showReview } from "./console-review.js";

(() => {
  const SVG_NS = "http://www.w3.org/2000/svg";
  // The voice stages in the order they happen (docs/latency.md); network is reported beside their sum.
  const STAGES = ["eos", "eos_wait", "transcriber", "llm", "tts", "initial_wait"];
  const STAGE_NAMES = {
    eos: "end of speech (eos)",
    eos_wait: "end-of-speech wait (eos_wait)",
    transcriber: "transcriber",
    llm: "interviewer (llm)",
    tts: "speech synthesis (tts)",
    initial_wait: "initial wait",
    network: "network (beside)",
  };
  const TRANSCRIPT_FORMATS = ["txt", "vtt", "srt", "json"];
  const PAGE_SIZE = 20;
  const notice = document.getElementById("notice");

  // --- DOM helpers: text only ---------------------------------------------------------------------

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, String(value));
    node.append(...children); // strings become text nodes
    return node;
  }

  function svg(tag, attrs = {}, ...children) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, String(value));
    node.append(...children);
    return node;
  }

  function say(text, { error = false } = {}) {
    notice.textContent = text;
    notice.hidden = !text;
    notice.classList.toggle("error", error);
    notice.setAttribute("role", error ? "alert" : "status");
  }

  // --- the API ------------------------------------------------------------------------------------

  async function api(path) {
    const response = await fetch(path, {
      credentials: "same-origin",
      headers: { Accept: "application/json", "X-Requested-With": "vivavoce-console" },
    });
    if (response.status === 401) {
      location.assign("/console/sign-in?next=" + encodeURIComponent(location.pathname + location.search));
      throw new Error("You are signed out: sign in again.");
    }
    let body = null;
    try {
      body = await response.json();
    } catch {
      body = null;
    }
    if (!response.ok) {
      const message = body && body.error && body.error.message ? body.error.message : `HTTP ${response.status}`;
      throw new Error(message);
    }
    return body;
  }

  // --- formatting ---------------------------------------------------------------------------------

  const pad = (n) => String(n).padStart(2, "0");

  function formatDate(iso) {
    if (!iso) return "—";
    const d = new Date(iso);
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}`;
  }

  function timeNode(iso) {
    return iso ? el("time", { datetime: iso }, formatDate(iso)) : "—";
  }

  function formatDuration(seconds) {
    if (seconds === null || seconds === undefined) return "—";
    if (seconds < 60) return `${seconds.toFixed(1)} s`;
    const minutes = Math.floor(seconds / 60);
    return `${minutes} min ${pad(Math.floor(seconds - minutes * 60))} s`;
  }

  function formatOffset(seconds) {
    if (seconds === null || seconds === undefined) return "";
    const minutes = Math.floor(seconds / 60);
    return `${minutes}:${pad(Math.floor(seconds - minutes * 60))}`;
  }

  const formatMs = (ms) => (ms === null || ms === undefined ? "—" : ms.toFixed(1));
  const words = (value) => (value ? value.replaceAll("_", " ") : "—");

  function participantName(p) {
    return (p && (p.name || p.external_id || p.email)) || "(anonymous)";
  }

  function statusBadge(status) {
    return el("span", { class: `status status-${status}` }, words(status));
  }

  // --- the runs list ------------------------------------------------------------------------------

  function runRow(run) {
    const link = el("a", { href: `/console/runs/${encodeURIComponent(run.id)}`, title: run.id }, timeNode(run.created_at));
    return el(
      "tr",
      { "data-run-id": run.id },
      el("td", {}, link),
      el("td", { class: "participant" }, participantName(run.participant)),
      el("td", {}, statusBadge(run.status)),
      el("td", {}, words(run.end_reason)),
      el("td", { class: "num" }, formatDuration(run.duration_s)),
      el("td", {}, run.annotation ? el("span", { class: `annotation annotation-${run.annotation}` }, run.annotation) : "—"),
    );
  }

  async function showRuns() {
    const params = new URLSearchParams(location.search);
    const status = params.get("status") || "";
    const after = params.get("starting_after") || "";
    const select = document.getElementById("status-filter");
    select.value = status;
    document.getElementById("runs-view").hidden = false;
    const limit = params.get("limit") || String(PAGE_SIZE);
    const query = new URLSearchParams({ limit });
    const blueprint = BLUEPRINT_ID.test(params.get("blueprint_id") || "") ? params.get("blueprint_id") : "";
    if (status) query.set("status", status);
    if (after) query.set("starting_after", after);
    if (blueprint) query.set("blueprint_id", blueprint);
    showStudyExports(blueprint, status);
    const page = await api("/v1/runs?" + query.toString());
    const tbody = document.querySelector("#runs tbody");
    if (page.data.length === 0) {
      tbody.replaceChildren(el("tr", {}, el("td", { colspan: 6, class: "empty" }, "No runs match.")));
    } else {
      tbody.replaceChildren(...page.data.map(runRow));
    }
    const first = document.getElementById("first-page");
    first.hidden = !after;
    const firstQuery = new URLSearchParams();
    if (status) firstQuery.set("status", status);
    if (blueprint) firstQuery.set("blueprint_id", blueprint);
    if (params.has("limit")) firstQuery.set("limit", limit);
    first.href = firstQuery.size ? `/console?${firstQuery}` : "/console";
    const next = document.getElementById("next-page");
    next.hidden = !page.has_more;
    if (page.has_more) {
      const nextQuery = new URLSearchParams(firstQuery);
      nextQuery.set("starting_after", page.data[page.data.length - 1].id);
      next.href = `/console?${nextQuery}`;
    }
    const count = page.data.length;
    const shown = `${count} run${count === 1 ? "" : "s"} shown${status ? ` with status ${words(status)}` : ""}`;
    document.getElementById("runs-count").textContent = `${shown}, newest first${page.has_more ? "; more on the next page" : ""}.`;
    say("");
  }

  // A blueprint's runs (?blueprint_id=bp_…): the study-level exports of GET /v1/blueprints/{id}/responses and
  // /transcripts.zip, with the same status filter.
  const BLUEPRINT_ID = /^bp_[0-9a-z]{26}$/;
  const STUDY_EXPORTS = [
    ["responses", "csv", "Answers (CSV)"],
    ["responses", "xlsx", "Answers (Excel)"],
    ["responses", "jsonl", "Answers (JSON Lines)"],
    ["transcripts.zip", "txt", "All transcripts (zip)"],
    ["transcripts.zip", "txt&recordings=true", "All transcripts and recordings (zip)"],
  ];

  function showStudyExports(blueprint, status) {
    const section = document.getElementById("study-exports");
    const hidden = document.getElementById("blueprint-filter");
    section.hidden = !blueprint;
    hidden.disabled = !blueprint;
    hidden.value = blueprint;
    if (!blueprint) return;
    const base = `/v1/blueprints/${encodeURIComponent(blueprint)}/`;
    const filter = status ? `&status=${encodeURIComponent(status)}` : "";
    const items = STUDY_EXPORTS.map(([what, format, label]) => {
      const file = what === "responses" ? `${blueprint}-responses.${format}` : `${blueprint}-transcripts.zip`;
      const link = el("a", { href: `${base}${what}?format=${format}${filter}`, download: file, class: "button" }, label);
      return el("li", {}, link);
    });
    document.getElementById("study-downloads").replaceChildren(...items);
  }

  // --- one run ------------------------------------------------------------------------------------

  function fact(list, term, value) {
    list.append(el("div", {}, el("dt", {}, term), el("dd", {}, value)));
  }

  function hasRecording(run) {
    const channel = run.channel;
    return Boolean(
      channel &&
        channel.type === "webrtc_voice" &&
        channel.settings &&
        channel.settings.recording &&
        (run.sessions || []).some((s) => s.type === "voice"),
    );
  }

  const ENDED = new Set(["completed", "cancelled", "failed"]);

  function renderFacts(run) {
    const facts = document.getElementById("run-facts");
    facts.replaceChildren();
    fact(facts, "Participant", participantName(run.participant));
    if (run.participant && run.participant.email) fact(facts, "Email", run.participant.email);
    fact(facts, "Status", statusBadge(run.status));
    fact(facts, "End reason", words(run.end_reason));
    fact(facts, "Duration", formatDuration(run.duration_s));
    fact(facts, "Created", timeNode(run.created_at));
    fact(facts, "Started", timeNode(run.started_at));
    if (run.blueprint) {
      const study = el("a", { href: `/console?blueprint_id=${encodeURIComponent(run.blueprint_id)}` }, "its runs and exports");
      fact(facts, "Blueprint", el("span", {}, `${run.blueprint.name} (version ${run.blueprint_version}), `, study));
    }
    if (run.channel) fact(facts, "Channel", `${run.channel.name} (${words(run.channel.type)})`);
    const who = run.blueprint && run.blueprint.interviewer;
    if (who) {
      const label = who.type === "llm" ? `AI: ${who.model || "default"} (prompt ${who.prompt_version || "?"})` : "Scripted";
      fact(facts, "Interviewer", label);
    }
    const usage = run.usage;
    if (usage && usage.llm_calls) {
      const cost = usage.cost_usd === null ? "cost unknown (no price set)" : `$${usage.cost_usd.toFixed(4)}`;
      fact(facts, "LLM use", `${usage.llm_calls} calls, ${usage.input_tokens} in / ${usage.output_tokens} out tokens, ${cost}`);
    }
    const flagged = (run.transcript || []).filter((m) => (m.flags || []).length).length;
    if (flagged) fact(facts, "Flagged messages", String(flagged));
    fact(facts, "Run id", el("code", {}, run.id));
  }

  function renderDownloads(run, recorded) {
    const base = `/v1/runs/${encodeURIComponent(run.id)}`;
    const items = TRANSCRIPT_FORMATS.map((fmt) =>
      el(
        "li",
        {},
        el(
          "a",
          { href: `${base}/transcript?format=${fmt}`, download: `${run.id}.${fmt}`, class: "button", "data-format": fmt },
          `Transcript (${fmt.toUpperCase()})`,
        ),
      ),
    );
    if (recorded) {
      items.push(
        el(
          "li",
          {},
          el("a", { href: `${base}/recording`, download: `${run.id}.wav`, class: "button", id: "recording-download" },
            "Recording (WAV)"),
        ),
      );
    }
    document.getElementById("downloads").replaceChildren(...items);
  }

  function groupTitle(questionId, message, questions, seenQuestion) {
    if (questionId !== null) {
      const q = questions.get(questionId);
      return q ? `${questionId} · ${q.text}` : questionId;
    }
    if (message.kind === "closing") return "Closing";
    return seenQuestion ? "Outside a question" : "Opening";
  }

  // The transcript grouped by question (consecutive messages of the same question), in order.
  function renderTranscript(run, audio) {
    const questions = new Map(((run.blueprint && run.blueprint.questions) || []).map((q) => [q.id, q]));
    const container = document.getElementById("transcript");
    const lines = [];
    const groups = [];
    let list = null;
    let current;
    let seenQuestion = false;
    for (const message of run.transcript || []) {
      // a participant's message answers the question asked before it (it carries no question_id itself)
      const questionId = message.question_id ?? (message.role === "user" && list !== null ? current : null);
      if (list === null || questionId !== current) {
        current = questionId;
        const title = groupTitle(questionId, message, questions, seenQuestion);
        seenQuestion = seenQuestion || questionId !== null;
        const headingId = `group-${groups.length}`;
        list = el("ol", { class: "lines" });
        groups.push(
          el(
            "section",
            { class: "question-group", "data-question-id": questionId ?? "", "aria-labelledby": headingId },
            el("h3", { id: headingId }, title),
            list,
          ),
        );
      }
      const who = message.role === "user" ? "Participant" : "Interviewer";
      const item = el("li", {
        class: `line role-${message.role}`,
        "data-message-id": message.id,
        "data-role": message.role,
      });
      const meta = el("div", { class: "line-meta" }, el("span", { class: "who" }, who));
      const at = formatOffset(message.start_offset_s);
      if (at && audio) {
        const seek = el("button", { type: "button", class: "seek", "aria-label": `Play from ${at}` }, at);
        seek.addEventListener("click", () => {
          audio.currentTime = message.start_offset_s;
          audio.play().catch(() => {});
        });
        meta.append(seek);
      } else if (at) {
        meta.append(el("span", { class: "offset" }, at));
      }
      if (message.is_filler) meta.append(el("span", { class: "flag" }, "filler"));
      for (const flag of message.flags || []) meta.append(el("span", { class: "flag flag-alert" }, words(flag)));
      const made = message.generation;
      if (made && made.fallback) {
        meta.append(el("span", { class: "flag", title: made.fallback_reason || "" }, "scripted fallback"));
      }
      if (message.is_interrupted) meta.append(el("span", { class: "flag" }, "interrupted"));
      item.append(meta, el("p", { class: "content" }, message.content));
      list.append(item);
      lines.push({ node: item, start: message.start_offset_s, end: message.end_offset_s });
    }
    if (groups.length === 0) {
      container.replaceChildren(el("p", {}, "No messages: the participant has not joined."));
    } else {
      container.replaceChildren(...groups);
    }
    return lines;
  }

  // The line whose [start, end] holds t (the latest-starting one if several overlap).
  function lineAt(lines, t) {
    let found = null;
    for (const line of lines) {
      if (line.start !== null && line.end !== null && line.start <= t && t <= line.end) found = line;
    }
    return found;
  }

  function followPlayback(audio, lines) {
    let speaking = null;
    const update = () => {
      const line = lineAt(lines, audio.currentTime);
      if (line === speaking) return;
      if (speaking) {
        speaking.node.classList.remove("speaking");
        speaking.node.removeAttribute("aria-current");
      }
      speaking = line;
      if (line) {
        line.node.classList.add("speaking");
        line.node.setAttribute("aria-current", "true");
      }
    };
    for (const name of ["timeupdate", "seeked", "play"]) audio.addEventListener(name, update);
  }

  function renderLegend(present) {
    const items = [...STAGES, "network"]
      .filter((stage) => present.has(stage))
      .map((stage) =>
        el("li", { "data-stage": stage }, el("span", { class: `swatch stage-${stage}`, "aria-hidden": "true" }),
          STAGE_NAMES[stage]),
      );
    document.getElementById("legend").replaceChildren(...items);
  }

  // A round axis step (1, 2 or 5 times a power of ten) close to rough.
  function niceStep(rough) {
    const power = 10 ** Math.floor(Math.log10(rough));
    const steps = [1, 2, 5, 10].map((m) => m * power);
    return steps.find((step) => step >= rough) ?? steps[steps.length - 1];
  }

  // One row per assistant message with a breakdown: the stages stacked left to right, network underneath.
  // Every bar's width is its value times one scale, so bars compare across rows.
  function renderWaterfall(run) {
    const container = document.getElementById("waterfall");
    const rows = (run.transcript || []).filter((m) => m.role === "assistant" && m.latency_breakdown);
    const present = new Set();
    for (const m of rows) {
      for (const [stage, value] of Object.entries(m.latency_breakdown)) if (value !== null) present.add(stage);
    }
    renderLegend(present);
    if (rows.length === 0) {
      container.replaceChildren(el("p", {}, "No interviewer messages with latency measurements yet."));
      return;
    }
    const sumOf = (lat) => STAGES.reduce((total, stage) => total + (lat[stage] ?? 0), 0);
    const largest = Math.max(1, ...rows.map((m) => Math.max(sumOf(m.latency_breakdown), m.latency_breakdown.network ?? 0)));
    const LABEL = 190;
    const BARS = 560;
    const TOTAL = 90;
    const ROW = 36;
    const TOP = 26;
    const width = LABEL + BARS + TOTAL;
    const height = TOP + rows.length * ROW + 4;
    const scale = BARS / largest;
    const root = svg("svg", {
      viewBox: `0 0 ${width} ${height}`,
      width: "100%",
      role: "img",
      "aria-labelledby": "waterfall-title waterfall-desc",
      "data-ms-per-unit": 1 / scale,
    });
    root.append(svg("title", { id: "waterfall-title" }, "Latency waterfall per interviewer message"));
    const step = niceStep(largest / 5);
    for (let i = 0; i * step <= largest; i++) {
      const tick = Number((i * step).toPrecision(6));
      const x = LABEL + tick * scale;
      root.append(
        svg("line", { x1: x, x2: x, y1: TOP - 6, y2: height, class: "grid" }),
        svg("text", { x, y: TOP - 10, class: "axis", "text-anchor": tick === 0 ? "start" : "middle" }, `${tick} ms`),
      );
    }
    rows.forEach((message, i) => {
      const lat = message.latency_breakdown;
      const y = TOP + i * ROW;
      const n = (run.transcript || []).indexOf(message) + 1;
      const label = `#${n} ${words(message.kind)}${message.question_id ? ` (${message.question_id})` : ""}`;
      const row = svg("g", { class: "row", "data-message-id": message.id });
      row.append(svg("text", { x: LABEL - 8, y: y + 12, class: "label", "text-anchor": "end" }, label,
        svg("title", {}, message.content)));
      let x = LABEL;
      for (const stage of STAGES) {
        const value = lat[stage];
        if (value === null || value === undefined) continue; // a stage that did not occur (chat: most)
        const w = value * scale;
        row.append(
          svg("rect", { x, y, width: w, height: 16, class: `bar stage-${stage}`, "data-stage": stage, "data-ms": value },
            svg("title", {}, `${STAGE_NAMES[stage]}: ${formatMs(value)} ms`)),
        );
        x += w;
      }
      if (lat.network !== null && lat.network !== undefined) {
        row.append(
          svg("rect", { x: LABEL, y: y + 19, width: lat.network * scale, height: 7, class: "bar stage-network",
            "data-stage": "network", "data-ms": lat.network },
          svg("title", {}, `${STAGE_NAMES.network}: ${formatMs(lat.network)} ms`)),
        );
      }
      row.append(svg("text", { x: LABEL + BARS + 8, y: y + 12, class: "total" }, `${formatMs(sumOf(lat))} ms`));
      root.append(row);
    });
    container.replaceChildren(root);
  }

  function renderSummary(run) {
    const tbody = document.querySelector("#latency-summary tbody");
    const rows = [];
    for (const stage of [...STAGES, "network"]) {
      const s = run.latency && run.latency[stage];
      if (!s || !s.count) continue; // never occurred in this run
      rows.push(
        el(
          "tr",
          { "data-stage": stage },
          el("th", { scope: "row" }, STAGE_NAMES[stage]),
          el("td", { class: "num p50" }, formatMs(s.p50)),
          el("td", { class: "num p95" }, formatMs(s.p95)),
          el("td", { class: "num count" }, String(s.count)),
        ),
      );
    }
    if (rows.length === 0) rows.push(el("tr", {}, el("td", { colspan: 4, class: "empty" }, "No measurements.")));
    tbody.replaceChildren(...rows);
  }

  function renderResult(run) {
    const result = run.result || { status: "pending" };
    const status = document.getElementById("result-status");
    const questions = new Map(((run.blueprint && run.blueprint.questions) || []).map((q) => [q.id, q]));
    const statusText = {
      pending: ENDED.has(run.status) ? "The analysis is in progress." : "Available once the interview has ended.",
      ready: "",
      failed: "The analysis failed.",
    }[result.status];
    status.textContent = statusText || "";
    const summary = result.summary;
    const how = summary ? (summary.method === "llm" ? ` (written by ${summary.model})` : " (extractive)") : "";
    document.getElementById("result-overall").textContent = summary ? summary.overall + how : "";
    const list = document.getElementById("result-questions");
    list.replaceChildren();
    for (const q of (summary && summary.questions) || []) {
      const question = questions.get(q.question_id);
      fact(list, question ? question.text : q.question_id, q.summary);
    }
    const data = document.getElementById("result-data");
    const dataTitle = document.getElementById("result-data-title");
    data.hidden = dataTitle.hidden = result.result === null || result.result === undefined;
    data.textContent = data.hidden ? "" : JSON.stringify(result.result, null, 2);
    const error = document.getElementById("result-error");
    error.hidden = !result.result_error;
    error.textContent = result.result_error ? `Result not extracted: ${result.result_error}` : "";
  }

  async function showRun(runId) {
    const expand = ["transcript", "blueprint", "channel", "sessions", "result", "issues"].map((e) => `expand=${e}`).join("&");
    const run = await api(`/v1/runs/${encodeURIComponent(runId)}?${expand}`);
    const name = participantName(run.participant);
    document.title = `${name} · vivavoce console`;
    document.getElementById("run-title").textContent = `Run with ${name}`;
    renderFacts(run);
    const recorded = hasRecording(run) && ENDED.has(run.status);
    renderDownloads(run, recorded);
    const panel = document.getElementById("recording-panel");
    const audio = document.getElementById("recording");
    panel.hidden = !recorded;
    if (recorded) {
      audio.addEventListener("error", () => {
        panel.replaceChildren(el("h2", { id: "recording-title" }, "Recording"),
          el("p", { role: "alert" }, "The recording could not be loaded."));
      });
      audio.src = `/v1/runs/${encodeURIComponent(run.id)}/recording`;
    }
    const lines = renderTranscript(run, recorded ? audio : null);
    if (recorded) followPlayback(audio, lines);
    showReview(run, { el, timeNode, words });
    renderWaterfall(run);
    renderSummary(run);
    renderResult(run);
    document.getElementById("run-view").hidden = false;
    say("");
  }

  // --- routing ------------------------------------------------------------------------------------

  async function main() {
    const match = location.pathname.match(/^\/console\/runs\/([A-Za-z0-9_]+)$/);
    try {
      if (match) await showRun(match[1]);
      else await showRuns();
    } catch (error) {
      say(error instanceof Error ? error.message : String(error), { error: true });
    }
  }

  main();
})();
