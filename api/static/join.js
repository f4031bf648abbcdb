// Participant client for vivavoce: chat over a websocket, or voice over WebRTC.
// Protocol: docs/protocol.md. Dependency-free ES2020; exposes no globals.
(() => {
  "use strict";

  const WS_PATH = document.body.dataset.wsPath || "";
  const JOIN_PATH = WS_PATH.replace(/\/ws$/, ""); // /join/{token}
  const STORAGE_KEY = "vivavoce:pending:" + WS_PATH;
  const BACKOFF_MIN_MS = 500, BACKOFF_MAX_MS = 8000, TYPING_EVERY_MS = 2000;
  const RETRY_STORE_MS = 2000; // the server could not save an answer: send it again after this
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
    chat: $("chat"), footer: $("chat-footer"),
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
    followStudyRedirect();
  }

  // A run made from a study link sends its participant back to the panel (their completion URL) when it ends.
  const REDIRECT_AFTER_MS = 3000;

  async function followStudyRedirect() {
    let info = null;
    try {
      info = await fetchInfo();
    } catch (_) {
      return;
    }
    const url = info && info.redirect_url;
    if (!url || !/^https?:\/\//.test(url)) return;
    ui.endText.textContent += " Taking you back to the study…";
    setTimeout(() => location.assign(url), REDIRECT_AFTER_MS);
  }

  function onError(frame) {
    const entry = frame.client_id && state.pending.get(frame.client_id);
    if (entry && frame.code === "storage_unavailable") { // not saved, not refused: keep it and send it again
      setTimeout(() => {
        if (state.ready && state.pending.has(entry.client_id)) {
          sendFrame({ type: "message", content: entry.content, client_id: entry.client_id });
        }
      }, RETRY_STORE_MS);
      return;
    }
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

  function startChat() {
    ui.chat.hidden = false;
    ui.footer.hidden = false;
    ui.form.addEventListener("submit", (e) => { e.preventDefault(); submitAnswer(); });
    ui.input.addEventListener("keydown", onInputKeydown);
    ui.input.addEventListener("input", onInput);
    ui.noticeClose.addEventListener("click", hideNotice);
    ui.takeover.addEventListener("click", takeOver);
    window.addEventListener("online", () => { if (state.retryTimer) { state.attempt = 0; connect(); } });
    state.heartbeat = setInterval(checkHeartbeat, PING_EVERY_MS);
    updateComposer();
    connect();
  }

  // ---- how to join: GET /join/{token}/info says chat or voice, and the run's status ----
  const TERMINAL = new Set(["completed", "cancelled", "failed"]);

  async function fetchInfo() {
    const response = await fetch(JOIN_PATH + "/info", { cache: "no-store", headers: { Accept: "application/json" } });
    if (response.status === 404) return { invalid: true };
    if (!response.ok) throw new Error("HTTP " + response.status);
    return response.json();
  }

  async function loadInfo(attempt) {
    try {
      return await fetchInfo();
    } catch (_) {
      const delay = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** attempt) * (0.75 + Math.random() * 0.5);
      setStatus("Reconnecting…");
      await new Promise((resolve) => setTimeout(resolve, delay));
      return loadInfo(attempt + 1);
    }
  }

  async function start() {
    if (!WS_PATH) { setStatus("This link is not valid."); return; }
    const info = await loadInfo(0);
    if (info.invalid) { setStatus("This interview link is not valid."); return; }
    if (info.mode === "voice") { startVoice(info); return; }
    startChat();
  }

  // =====================================================================================
  // Voice: microphone → RTCPeerConnection → POST {join}/offer; events on the "events" data channel.
  // =====================================================================================
  const GATHER_TIMEOUT_MS = 3000, CONNECT_TIMEOUT_MS = 20000, METER_EVERY_MS = 100;
  // A call that drops (a network change, or the server handing its interviews over during an upgrade) is
  // connected again by itself, after these pauses (jittered, so a drained server's callers do not all come
  // back at once); only then is the participant asked to press Try again.
  const RECONNECT_DELAYS_MS = [250, 1000, 2000, 4000];
  const VOICE_STATE_TEXT = {
    connecting: "Connecting…",
    listening: "The interviewer is listening",
    thinking: "The interviewer is thinking…",
    speaking: "The interviewer is speaking",
  };
  const VOICE_ERRORS = {
    NotAllowedError: ["Microphone blocked",
      "This page is not allowed to use your microphone. Allow microphone access for this site "
      + "(usually with the icon next to the address bar), then press Try again."],
    NotFoundError: ["No microphone found",
      "We could not find a microphone. Connect a microphone or a headset, then press Try again."],
    NotReadableError: ["Microphone unavailable",
      "Your microphone could not be started. It may be in use by another app: close it, then press Try again."],
    InsecureContext: ["Microphone unavailable",
      "Your browser only allows the microphone on a secure (https) page. Please open the link you were given."],
    Unsupported: ["Browser not supported",
      "This browser cannot make voice calls. Please open the link in a recent Chrome, Edge, Firefox or Safari."],
    ConnectionFailed: ["Could not connect",
      "We could not connect you to the interviewer. Check your internet connection, then press Try again."],
    ConnectionLost: ["Connection lost",
      "The connection to the interviewer was lost. Press Try again to continue where you left off."],
    Replaced: ["Opened elsewhere",
      "This interview was opened in another window or tab. Press Try again to continue here instead."],
  };
  const ERROR_ALIASES = {
    PermissionDeniedError: "NotAllowedError", SecurityError: "NotAllowedError",
    DevicesNotFoundError: "NotFoundError", OverconstrainedError: "NotFoundError",
    TrackStartError: "NotReadableError", AbortError: "NotReadableError",
  };
  const HANGUP_TEXT = "You left the interview. Thank you for your time.";
  const HANGUP_HINT = "Hung up by mistake? Reload this page soon to continue the interview.";

  const vui = {
    main: $("voice"), start: $("voice-start"), startButton: $("voice-start-button"), recording: $("voice-recording"),
    error: $("voice-error"), errorTitle: $("voice-error-title"), errorText: $("voice-error-text"),
    retry: $("voice-retry"), call: $("voice-call"), stateBox: document.querySelector(".call__state"),
    state: $("voice-state"), level: $("voice-level"), muted: $("voice-muted"), captions: $("voice-captions"),
    partial: $("voice-partial"), mute: $("voice-mute"), hangup: $("voice-hangup"), audio: $("voice-audio"),
  };

  const voice = {
    info: null, stream: null, track: null, pc: null, channel: null, audioCtx: null, analyser: null,
    meterTimer: 0, connectTimer: 0, retryTimer: 0, generation: 0, level: 0, state: "connecting",
    busy: false, muted: false, ended: false, left: false, seen: new Set(),
    retries: 0, moving: false, // tries made by itself since the call dropped; told by the server to move
  };

  function voiceError(name, message) {
    const err = new Error(message || name);
    err.name = name;
    return err;
  }

  function startVoice(info) {
    voice.info = info;
    vui.main.hidden = false;
    vui.recording.hidden = !info.recording;
    vui.startButton.addEventListener("click", onStartPressed);
    vui.retry.addEventListener("click", onStartPressed);
    vui.mute.addEventListener("click", toggleMute);
    vui.hangup.addEventListener("click", hangUp);
    window.addEventListener("pagehide", () => { if (!voice.ended) teardownVoice(); });
    if (TERMINAL.has(info.status)) { voiceEnded(info.end_reason, info.status); return; }
    setStatus("Ready when you are");
  }

  // Everything that needs a user gesture happens synchronously here, before the first await.
  function onStartPressed() {
    if (voice.busy || voice.ended) return;
    voice.busy = true;
    voice.retries = 0;
    vui.startButton.disabled = vui.retry.disabled = true;
    const Ctx = window.AudioContext || window.webkitAudioContext;
    if (Ctx && !voice.audioCtx) {
      try { voice.audioCtx = new Ctx(); } catch (_) { voice.audioCtx = null; }
    }
    if (voice.audioCtx && voice.audioCtx.state === "suspended") voice.audioCtx.resume().catch(() => {});
    vui.audio.play().catch(() => {}); // unlock playback on browsers that need a gesture
    let mic = Promise.resolve();
    if (!voice.track || voice.track.readyState !== "live") mic = openMic(); // getUserMedia inside the click
    mic.then(() => { startMeter(); return connectPeer(); })
      .catch((err) => { if (!voice.ended) showVoiceError(err); })
      .finally(() => { voice.busy = false; vui.startButton.disabled = vui.retry.disabled = false; });
  }

  function openMic() {
    const media = navigator.mediaDevices;
    if (!media || !media.getUserMedia) {
      return Promise.reject(voiceError(window.isSecureContext === false ? "InsecureContext" : "Unsupported"));
    }
    setStatus("Waiting for your microphone…");
    const constraints = { audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true }, video: false };
    return media.getUserMedia(constraints).then((stream) => {
      stopMic();
      voice.stream = stream;
      voice.track = stream.getAudioTracks()[0];
      if (!voice.track) throw voiceError("NotFoundError");
      voice.track.enabled = !voice.muted;
      voice.track.addEventListener("ended", () => {
        if (voice.ended || voice.left) return;
        closePeer();
        showVoiceError(voiceError("NotReadableError"));
      });
    });
  }

  function stopMic() {
    if (voice.stream) for (const track of voice.stream.getTracks()) track.stop();
    voice.stream = voice.track = null;
    stopMeter();
  }

  // ---- microphone level (WebAudio AnalyserNode) ----
  function startMeter() {
    stopMeter();
    if (!voice.audioCtx || !voice.stream) return;
    const source = voice.audioCtx.createMediaStreamSource(voice.stream);
    const analyser = voice.audioCtx.createAnalyser();
    analyser.fftSize = 1024;
    source.connect(analyser);
    voice.analyser = analyser;
    const samples = new Float32Array(analyser.fftSize);
    voice.meterTimer = setInterval(() => {
      analyser.getFloatTimeDomainData(samples);
      let sum = 0;
      for (let i = 0; i < samples.length; i += 1) sum += samples[i] * samples[i];
      const db = 20 * Math.log10(Math.sqrt(sum / samples.length) + 1e-9);
      const level = Math.max(0, Math.min(1, (db + 60) / 60)); // -60 dBFS .. 0 dBFS
      voice.level = Math.max(level, voice.level * 0.7); // fast attack, slow decay
      if (voice.level < 0.01) voice.level = 0;
      vui.level.value = voice.level;
      vui.level.textContent = Math.round(voice.level * 100) + "%";
    }, METER_EVERY_MS);
  }

  function stopMeter() {
    clearInterval(voice.meterTimer);
    voice.meterTimer = 0;
    voice.analyser = null;
    voice.level = 0;
    vui.level.value = 0;
  }

  // ---- the peer connection ----
  function waitForGathering(pc) {
    if (pc.iceGatheringState === "complete") return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => { clearTimeout(timer); pc.removeEventListener("icegatheringstatechange", check); resolve(); };
      const check = () => { if (pc.iceGatheringState === "complete") done(); };
      const timer = setTimeout(done, GATHER_TIMEOUT_MS); // send what we have: the server can still reach us
      pc.addEventListener("icegatheringstatechange", check);
    });
  }

  async function connectPeer() {
    closePeer();
    if (!window.RTCPeerConnection) throw voiceError("Unsupported");
    const generation = ++voice.generation;
    const current = () => generation === voice.generation && !voice.ended && !voice.left;
    const focusWasOnScreen = [vui.startButton, vui.retry, document.body].includes(document.activeElement);
    hideVoiceError();
    vui.start.hidden = true;
    vui.call.hidden = false;
    if (focusWasOnScreen) vui.call.focus(); // the button that had focus is gone: keep keyboard users in place
    setVoiceState("connecting");
    setStatus(voice.retries > 0 ? "Reconnecting…" : "Connecting…");
    const pc = new RTCPeerConnection({ iceServers: voice.info.ice_servers || [] });
    voice.pc = pc;
    pc.addTransceiver(voice.track, { direction: "sendrecv", streams: [voice.stream] });
    const channel = pc.createDataChannel("events");
    voice.channel = channel;
    channel.onmessage = (event) => { if (current()) onVoiceEvent(event.data); };
    channel.onclose = () => { if (current()) onPeerLost(); };
    pc.ontrack = (event) => {
      vui.audio.srcObject = event.streams[0] || new MediaStream([event.track]);
      vui.audio.play().catch(() => {});
    };
    pc.onconnectionstatechange = () => {
      if (!current()) return;
      const s = pc.connectionState;
      if (s === "connected") { clearTimeout(voice.connectTimer); setStatus("Connected"); }
      else if (s === "disconnected") setStatus("Connection unstable…");
      else if (s === "failed" || s === "closed") onPeerLost();
    };
    await pc.setLocalDescription(await pc.createOffer());
    await waitForGathering(pc);
    if (!current()) return;
    let response;
    try {
      response = await fetch(JOIN_PATH + "/offer", {
        method: "POST",
        headers: { "Content-Type": "application/json", Accept: "application/json" },
        body: JSON.stringify({ sdp: pc.localDescription.sdp, type: pc.localDescription.type }),
      });
    } catch (_) {
      throw voiceError("ConnectionFailed");
    }
    const body = await response.json().catch(() => ({}));
    if (!current()) return;
    if (!response.ok) {
      if (await checkRunEnded()) return;
      const detail = body && body.error && typeof body.error.message === "string" ? body.error.message : "";
      throw voiceError("ConnectionFailed", detail);
    }
    await pc.setRemoteDescription({ type: body.type, sdp: body.sdp });
    voice.connectTimer = setTimeout(() => {
      if (current() && pc.connectionState !== "connected") onPeerLost("ConnectionFailed");
    }, CONNECT_TIMEOUT_MS);
  }

  function closePeer() {
    voice.generation += 1; // late events of the old connection are ignored
    clearTimeout(voice.connectTimer);
    clearTimeout(voice.retryTimer);
    const { pc, channel } = voice;
    voice.pc = voice.channel = null;
    if (channel) { channel.onmessage = channel.onclose = null; try { channel.close(); } catch (_) { /* closed */ } }
    if (pc) { pc.ontrack = pc.onconnectionstatechange = null; try { pc.close(); } catch (_) { /* closed */ } }
    vui.audio.srcObject = null;
    vui.partial.textContent = "";
  }

  async function checkRunEnded() {
    try {
      const info = await fetchInfo();
      if (info && TERMINAL.has(info.status)) { voiceEnded(info.end_reason, info.status); return true; }
    } catch (_) { /* offline: not known to have ended */ }
    return false;
  }

  async function onPeerLost(name) {
    if (voice.ended || voice.left) return;
    const connected = voice.pc && voice.pc.connectionState === "connected";
    const moving = voice.moving;
    voice.moving = false;
    closePeer();
    if (await checkRunEnded()) return;
    if (connected || moving || voice.retries > 0) { reconnectSoon(); return; }
    showVoiceError(voiceError(name || "ConnectionFailed"));
  }

  // The call dropped after it had worked: connect again by itself, a few times, with the same microphone.
  function reconnectSoon() {
    if (voice.ended || voice.left) return;
    if (voice.retries >= RECONNECT_DELAYS_MS.length) {
      voice.retries = 0;
      showVoiceError(voiceError("ConnectionLost"));
      return;
    }
    const delay = RECONNECT_DELAYS_MS[voice.retries] * (0.75 + Math.random() / 2);
    voice.retries += 1;
    setVoiceState("connecting");
    setStatus("Reconnecting…");
    voice.retryTimer = setTimeout(() => {
      if (voice.ended || voice.left || voice.busy) return;
      if (!voice.track || voice.track.readyState !== "live") { showVoiceError(voiceError("NotReadableError")); return; }
      connectPeer().catch(() => reconnectSoon());
    }, delay);
  }

  // ---- events from the server ----
  function sendEvent(event) {
    const channel = voice.channel;
    if (channel && channel.readyState === "open") channel.send(JSON.stringify(event));
  }

  function onVoiceEvent(data) {
    let event;
    try { event = JSON.parse(data); } catch (_) { return; }
    if (!event || typeof event !== "object") return;
    switch (event.type) {
      case "ping": return sendEvent({ type: "pong", t: event.t });
      case "session.ready": return onVoiceReady(event);
      case "state": return setVoiceState(String(event.state || ""));
      case "caption": return onCaption(event);
      case "message": return addCaption(event.message || {});
      case "run.ended": return voiceEnded(event.reason, event.status);
      case "error": return onVoiceServerError(event);
      default: return undefined; // pong and unknown types
    }
  }

  function onVoiceReady(event) {
    voice.retries = 0;
    vui.captions.replaceChildren();
    voice.seen.clear();
    for (const message of event.messages || []) addCaption(message);
    setStatus(event.resumed ? "Reconnected" : "Connected");
    setVoiceState(event.resumed ? "listening" : "thinking"); // a new session starts with the greeting
  }

  function setVoiceState(name) {
    if (!VOICE_STATE_TEXT[name]) return;
    voice.state = name;
    vui.stateBox.dataset.state = name;
    vui.state.textContent = VOICE_STATE_TEXT[name];
  }

  function captionLine(role, text, final) {
    const line = make("p", "caption caption--" + role + (final ? "" : " caption--partial"), "");
    line.append(make("span", "caption__who", role === "user" ? "You: " : "Interviewer: "), make("span", "caption__text", text));
    return line;
  }

  function appendCaption(role, text) {
    const box = vui.captions;
    const near = box.scrollHeight - box.scrollTop - box.clientHeight < 80;
    box.append(captionLine(role, text, true));
    if (near) box.scrollTop = box.scrollHeight;
  }

  function addCaption(message) {
    if (message.role !== "assistant" && message.role !== "user") return;
    if (message.id) {
      if (voice.seen.has(message.id)) return;
      voice.seen.add(message.id);
    }
    appendCaption(message.role, String(message.content || ""));
  }

  function onCaption(event) {
    if (event.role !== "user") return;
    const text = String(event.text || "");
    if (!event.final) {
      vui.partial.replaceChildren(...(text ? [captionLine("user", text + "…", false)] : []));
      return;
    }
    vui.partial.replaceChildren();
    const last = vui.captions.lastElementChild;
    const lastText = last && last.classList.contains("caption--user") && last.querySelector(".caption__text");
    if (lastText && lastText.textContent === text) return; // the same answer, confirmed twice
    appendCaption("user", text);
    if (voice.state === "listening") setVoiceState("thinking");
  }

  function onVoiceServerError(event) {
    if (event.code === "replaced") {
      closePeer();
      showVoiceError(voiceError("Replaced"));
      return;
    }
    if (event.code === "server_restart") { // the server is handing this interview over: the call drops next
      voice.moving = true;
      setStatus("Reconnecting…");
      return;
    }
    if (typeof event.message === "string" && event.message) setStatus(event.message);
  }

  // ---- controls ----
  function toggleMute() {
    voice.muted = !voice.muted;
    if (voice.track) voice.track.enabled = !voice.muted;
    vui.mute.textContent = voice.muted ? "Unmute" : "Mute";
    vui.mute.classList.toggle("button--active", voice.muted);
    vui.muted.hidden = !voice.muted;
    setStatus(voice.muted ? "Your microphone is muted" : "Your microphone is on");
  }

  function teardownVoice() {
    closePeer();
    stopMic();
    if (voice.audioCtx) { voice.audioCtx.close().catch(() => {}); voice.audioCtx = null; }
  }

  function hangUp() {
    if (voice.ended) return;
    voice.left = true;
    teardownVoice();
    showVoiceEnd(HANGUP_TEXT, HANGUP_HINT);
  }

  function voiceEnded(reason, status) {
    if (voice.ended) return;
    teardownVoice();
    showVoiceEnd(END_TEXT[reason] || END_TEXT[status] || "The interview is over. Thank you.", "");
    followStudyRedirect();
  }

  function showVoiceEnd(text, hint) {
    voice.ended = true;
    vui.start.hidden = vui.error.hidden = true;
    vui.call.hidden = !vui.captions.firstElementChild; // the captions stay, to read back
    for (const live of vui.call.querySelectorAll(".call__state, .call__level, .call__controls")) live.hidden = true;
    vui.main.prepend(ui.end); // the chat page's end screen, shared
    ui.endText.textContent = hint ? text + " " + hint : text;
    ui.end.hidden = false;
    setStatus("Interview ended");
    ui.end.focus();
  }

  function hideVoiceError() { vui.error.hidden = true; }

  function showVoiceError(err) {
    const name = ERROR_ALIASES[err && err.name] || (err && err.name);
    const [title, text] = VOICE_ERRORS[name] || VOICE_ERRORS.ConnectionFailed;
    const detail = name === "ConnectionFailed" && err.message && err.message !== name ? " (" + err.message + ")" : "";
    vui.errorTitle.textContent = title;
    vui.errorText.textContent = text + detail;
    vui.retry.textContent = name === "Replaced" ? "Continue here" : "Try again";
    vui.start.hidden = true;
    vui.call.hidden = true;
    vui.error.hidden = false;
    setStatus(title);
    vui.retry.disabled = false; // a disabled button cannot take focus
    vui.retry.focus();
  }

  start();
})();
