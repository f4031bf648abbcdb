// Participant chat client for vivavoce. Protocol: docs/protocol.md.
// Dependency-free ES2020; exposes no globals.
(() => {
  "use strict";

  const WS_PATH = document.body.dataset.wsPath || "";
  const STORAGE_KEY = "vivavoce:pending:" + WS_PATH;
  const BACKOFF_MIN_MS = 500, BACKOFF_MAX_MS = 8000, TYPING_EVERY_MS = 2000;
  const PING_EVERY_MS = 25000, STALE_AFTER_MS = 60000; // keepalive / dead-connection detection
  const CLOSE_REPLACED = 4001, CLOSE_TOO_BIG = 1009;

  const END_TEXT = {
    completed: "Thank you for taking part! Your answers have been saved and you can close this page.",
    participant_left: "You left the interview. Thank you for your time.",
    idle_timeout: "The interview ended because there was no activity for a while.",
    max_duration: "The interview reached its time limit. Thank you for your answers.",
    cancelled: "The researcher cancelled this interview.",
    join_expired: "This interview link has expired.",
    error: "Something went wrong on our side and the interview had to stop. We are sorry.",
  };

  const $ = (id) => document.getElementById(id);
  const ui = {
    status: $("status"), messages: $("messages"), typing: $("typing"),
    end: $("end"), endText: $("end-text"), replaced: $("replaced"), takeover: $("takeover"),
    notice: $("notice"), noticeText: $("notice-text"), noticeClose: $("notice-close"),
    form: $("composer"), input: $("input"), send: $("send"), counter: $("counter"),
  };

  const encoder = new TextEncoder();
  const state = {
    socket: null, ready: false, ended: false, replaced: false,
    attempt: 0, retryTimer: 0, heartbeat: 0, lastFrameAt: 0, lastTypingAt: 0,
    maxBytes: 32768, pending: loadPending(), seenIds: new Set(), draft: null,
  };

  // ---- pending (unacknowledged) messages, mirrored to sessionStorage ----
  function loadPending() {
    const map = new Map();
    try {
      const list = JSON.parse(sessionStorage.getItem(STORAGE_KEY) || "[]");
      for (const { client_id, content } of list) map.set(client_id, { client_id, content, el: null });
    } catch (_) { /* storage unavailable or corrupt: start empty */ }
    return map;
  }

  function savePending() {
    const list = [...state.pending.values()].map(({ client_id, content }) => ({ client_id, content }));
    try {
      if (list.length) sessionStorage.setItem(STORAGE_KEY, JSON.stringify(list));
      else sessionStorage.removeItem(STORAGE_KEY);
    } catch (_) { /* private mode etc.: memory copy still works */ }
  }

  function newClientId() {
    if (crypto.randomUUID) return crypto.randomUUID().replace(/-/g, "");
    const bytes = crypto.getRandomValues(new Uint8Array(16));
    return [...bytes].map((b) => b.toString(16).padStart(2, "0")).join("");
  }

  // ---- rendering (text only ever goes through textContent) ----
  const isNearBottom = () => {
    const m = ui.messages;
    return m.scrollHeight - m.scrollTop - m.clientHeight < 80;
  };
  function scrollToEnd(force) {
    if (force || isNearBottom()) ui.messages.scrollTop = ui.messages.scrollHeight;
  }

  function make(tag, className, text) {
    const node = document.createElement(tag);
    node.className = className;
    node.textContent = text;
    return node;
  }

  function createBubble(role, content) {
    const bubble = make("div", "msg msg--" + role, "");
    const who = make("span", "visually-hidden", role === "user" ? "You: " : "Interviewer: ");
    bubble.append(who, make("p", "msg__text", content));
    return bubble;
  }

  function setBubbleStatus(bubble, status) {
    const badge = bubble.querySelector(".msg__status") || bubble.appendChild(make("span", "msg__status", ""));
    bubble.dataset.status = status;
    badge.textContent = { sending: "Sending…", sent: "Sent", failed: "Not sent" }[status];
  }

  function appendMessage(message) {
    if (message.role !== "assistant" && message.role !== "user") return null;
    if (message.id && state.seenIds.has(message.id)) return null;
    if (message.id) state.seenIds.add(message.id);
    const wasNear = isNearBottom();
    const bubble = createBubble(message.role, message.content || "");
    ui.messages.append(bubble);
    scrollToEnd(wasNear);
    return bubble;
  }

  function appendPendingBubble(entry) {
    entry.el = createBubble("user", entry.content);
    setBubbleStatus(entry.el, "sending");
    ui.messages.append(entry.el);
    scrollToEnd(true);
  }

  function clearDraft() {
    if (state.draft) state.draft.remove();
    state.draft = null;
  }
  function setTyping(active) {
    ui.typing.hidden = !active;
    if (active) scrollToEnd(false);
  }

  const setStatus = (text) => { ui.status.textContent = text; };
  const hideNotice = () => { ui.notice.hidden = true; };
  function showNotice(text) {
    ui.noticeText.textContent = text;
    ui.notice.hidden = false;
  }

  // ---- composer ----
  const byteLength = (text) => encoder.encode(text).length;

  function updateComposer() {
    const text = ui.input.value.trim();
    const bytes = byteLength(text);
    const blocked = state.ended || state.replaced;
    let reason = "";
    if (!text) reason = "Type an answer to send it.";
    else if (bytes > state.maxBytes) reason = `Too long by ${bytes - state.maxBytes} bytes, please shorten your answer.`;
    ui.counter.textContent = `${bytes.toLocaleString()} / ${state.maxBytes.toLocaleString()} bytes` + (reason ? ` · ${reason}` : "");
    ui.counter.classList.toggle("counter--over", bytes > state.maxBytes);
    ui.send.disabled = blocked || Boolean(reason);
    ui.input.disabled = state.ended;
  }

  function submitAnswer() {
    updateComposer(); // the value may have changed without an input event (autofill, IME)
    const content = ui.input.value.trim();
    if (ui.send.disabled) return;
    const entry = { client_id: newClientId(), content, el: null };
    state.pending.set(entry.client_id, entry);
    savePending();
    appendPendingBubble(entry);
    if (state.ready) sendFrame({ type: "message", content, client_id: entry.client_id });
    ui.input.value = "";
    updateComposer();
  }

  function onInputKeydown(event) {
    if (event.key !== "Enter" || event.shiftKey || event.isComposing || event.keyCode === 229) return;
    event.preventDefault();
    submitAnswer();
  }

  function onInput() {
    updateComposer();
    const now = Date.now();
    if (state.ready && ui.input.value.trim() && now - state.lastTypingAt >= TYPING_EVERY_MS) {
      state.lastTypingAt = now;
      sendFrame({ type: "typing" });
    }
  }

  // ---- server frames ----
  function onSessionReady(frame) {
    state.ready = true;
    state.attempt = 0;
    if (frame.limits && frame.limits.max_content_bytes) state.maxBytes = frame.limits.max_content_bytes;
    ui.messages.replaceChildren();
    state.seenIds.clear();
    state.draft = null;
    setTyping(false);
    const stored = new Set();
    for (const message of frame.messages || []) {
      if (message.client_id) stored.add(message.client_id);
      appendMessage(message);
    }
    for (const entry of [...state.pending.values()]) {
      if (stored.has(entry.client_id)) { state.pending.delete(entry.client_id); continue; }
      appendPendingBubble(entry);
      sendFrame({ type: "message", content: entry.content, client_id: entry.client_id });
    }
    savePending();
    setStatus(frame.resumed ? "Reconnected" : "Connected");
    updateComposer();
    scrollToEnd(true);
  }

  function onAck(clientId, message) {
    const entry = state.pending.get(clientId);
    if (!entry) { if (message) appendMessage(message); return; }
    state.pending.delete(clientId);
    savePending();
    if (message && message.id) state.seenIds.add(message.id);
    if (entry.el) setBubbleStatus(entry.el, "sent");
  }

  function onMessage(message) {
    if (message.role === "user" && state.pending.has(message.client_id)) { onAck(message.client_id, message); return; }
    if (message.role === "assistant") { clearDraft(); setTyping(false); }
    appendMessage(message);
  }

  function onDelta(text) {
    if (!state.draft) {
      state.draft = createBubble("assistant", "");
      state.draft.classList.add("msg--draft");
      state.draft.setAttribute("aria-hidden", "true"); // the final `message` is announced instead
      ui.messages.append(state.draft);
    }
    setTyping(false);
    state.draft.querySelector(".msg__text").textContent += text;
    scrollToEnd(false);
  }

  function onRunEnded(frame) {
    state.ended = true;
    state.ready = false;
    clearInterval(state.heartbeat);
    clearDraft();
    setTyping(false);
    for (const entry of state.pending.values()) if (entry.el) setBubbleStatus(entry.el, "failed");
    state.pending.clear();
    savePending();
    ui.endText.textContent = END_TEXT[frame.reason] || END_TEXT[frame.status] || "The interview is over. Thank you.";
    ui.end.hidden = false;
    ui.form.hidden = true;
    hideNotice();
    setStatus("Interview ended");
    updateComposer();
    ui.end.focus();
  }

  function onError(frame) {
    const entry = frame.client_id && state.pending.get(frame.client_id);
    if (entry) { // assumption: an error may name the rejected message's client_id
      state.pending.delete(frame.client_id);
      savePending();
      if (entry.el) setBubbleStatus(entry.el, "failed");
    }
    showNotice(frame.message || "Your last message could not be processed (" + (frame.code || "error") + ").");
  }

  function handleFrame(frame) {
    switch (frame.type) {
      case "session.ready": return onSessionReady(frame);
      case "message": return onMessage(frame.message || {});
      case "message.ack": return onAck(frame.client_id, frame.message);
      case "message.delta": return onDelta(String(frame.delta || ""));
      case "typing": return setTyping(Boolean(frame.active));
      case "run.ended": return onRunEnded(frame);
      case "error": return onError(frame);
      default: return undefined; // pong and unknown types
    }
  }

  // ---- connection ----
  function sendFrame(frame) {
    const ws = state.socket;
    if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(frame));
  }
  const socketUrl = () => (location.protocol === "https:" ? "wss://" : "ws://") + location.host + WS_PATH;

  function connect() {
    clearTimeout(state.retryTimer);
    state.retryTimer = 0;
    if (state.ended || state.socket) return;
    const ws = new WebSocket(socketUrl());
    state.socket = ws;
    state.lastFrameAt = Date.now();
    ws.onmessage = (event) => {
      state.lastFrameAt = Date.now();
      let frame;
      try { frame = JSON.parse(event.data); } catch (_) { return; }
      if (frame && typeof frame === "object") handleFrame(frame);
    };
    ws.onclose = (event) => onClose(ws, event.code);
    ws.onerror = () => { /* a close event always follows */ };
  }

  function detachSocket() {
    const ws = state.socket;
    state.socket = null;
    state.ready = false;
    clearDraft();
    setTyping(false);
    if (ws) {
      ws.onmessage = ws.onclose = ws.onerror = null;
      if (ws.readyState <= WebSocket.OPEN) ws.close();
    }
  }

  function onClose(ws, code) {
    if (ws !== state.socket) return;
    detachSocket();
    if (state.ended) return;
    if (code === CLOSE_REPLACED) {
      state.replaced = true;
      ui.replaced.hidden = false;
      setStatus("Paused: open in another window");
      updateComposer();
      return;
    }
    if (code === CLOSE_TOO_BIG) showNotice("A message was too large for the server and was dropped.");
    scheduleReconnect();
  }

  function scheduleReconnect() {
    if (state.ended || state.replaced || state.retryTimer) return;
    const base = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** state.attempt);
    state.attempt += 1;
    const delay = base * (0.75 + Math.random() * 0.5);
    setStatus("Reconnecting…");
    state.retryTimer = setTimeout(connect, delay);
  }

  function takeOver() {
    state.replaced = false;
    state.attempt = 0;
    ui.replaced.hidden = true;
    setStatus("Connecting…");
    updateComposer();
    connect();
  }

  function checkHeartbeat() {
    if (!state.socket || state.socket.readyState !== WebSocket.OPEN) return;
    if (Date.now() - state.lastFrameAt > STALE_AFTER_MS) { detachSocket(); scheduleReconnect(); return; }
    sendFrame({ type: "ping", t: Date.now() });
  }

  function start() {
    ui.form.addEventListener("submit", (e) => { e.preventDefault(); submitAnswer(); });
    ui.input.addEventListener("keydown", onInputKeydown);
    ui.input.addEventListener("input", onInput);
    ui.noticeClose.addEventListener("click", hideNotice);
    ui.takeover.addEventListener("click", takeOver);
    window.addEventListener("online", () => { if (state.retryTimer) { state.attempt = 0; connect(); } });
    state.heartbeat = setInterval(checkHeartbeat, PING_EVERY_MS);
    updateComposer();
    if (!WS_PATH) { setStatus("This link is not valid."); return; }
    connect();
  }

  start();
})();
