// The multi-turn synthesis page: talks to /v1/sessions, streams each turn's code as the model
// writes it, shows what running it produced, and offers undo / retry / edit / download.
// Plain JS, no dependencies: the page works offline.
"use strict";

const $ = (selector) => document.querySelector(selector);
const state = { session: null, busy: false, apiKey: sessionStorage.getItem("opencodegen-key") };

// ------------------------------------------------------------------------------- HTTP helpers

// Every POST/PUT says application/json, with or without a body: the server refuses other types
// (a cross-site page can send those without asking first).
function headers(method) {
  const h = {};
  if (method === "POST" || method === "PUT") h["Content-Type"] = "application/json";
  if (state.apiKey) h["Authorization"] = "Bearer " + state.apiKey;
  return h;
}

async function send(method, path, body) {
  for (let attempt = 0; attempt < 2; attempt++) {
    const response = await fetch(path, {
      method,
      headers: headers(method),
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    if (response.status === 401 && attempt === 0 && askForKey()) continue;
    if (!response.ok) throw new Error(await errorText(response));
    return response;
  }
}

function askForKey() {
  const key = window.prompt("This server needs an API key:");
  if (!key) return false;
  state.apiKey = key;
  sessionStorage.setItem("opencodegen-key", key);
  return true;
}

async function errorText(response) {
  try {
    const body = await response.json();
    return (body.error && body.error.message) || response.statusText;
  } catch (_) {
    return `${response.status} ${response.statusText}`;
  }
}

// POST `path` and call onEvent for every server-sent event (JSON after "data: ").
async function stream(path, body, onEvent) {
  const response = await send("POST", path, body);
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = block.split("\n").filter((l) => l.startsWith("data: ")).map((l) => l.slice(6)).join("\n");
      if (data && data !== "[DONE]") onEvent(JSON.parse(data));
    }
  }
}

// ------------------------------------------------------------------------------- rendering

function showError(message) {
  const box = $("#error");
  box.textContent = message || "";
  box.hidden = !message;
}

function setBusy(busy) {
  state.busy = busy;
  document.querySelectorAll("button").forEach((b) => { b.disabled = busy; });
  $("#instruction").disabled = busy;
  if (!busy) {
    $("#undo").disabled = !state.session || state.session.turns.length === 0;
    $("#instruction").focus();
  }
}

function outputBlock(cls, text) {
  const pre = document.createElement("pre");
  pre.className = "stream " + cls;
  pre.textContent = text;
  return pre;
}

function turnCard(turn, index) {
  const card = $("#turn-template").content.firstElementChild.cloneNode(true);
  card.dataset.index = index;
  card.querySelector(".number").textContent = "#" + (index + 1);
  card.querySelector(".instruction").textContent = turn.instruction;
  card.querySelector(".code").textContent = turn.code || "";
  const status = card.querySelector(".status");
  status.textContent = turn.status || "writing…";
  status.className = "status " + (turn.status || "");
  const output = card.querySelector(".output");
  if (turn.stdout) output.append(outputBlock("stdout", turn.stdout));
  if (turn.stderr) output.append(outputBlock("stderr", turn.stderr));
  if (turn.value != null) output.append(outputBlock("value", turn.value));
  if (turn.error) output.append(outputBlock("failure", turn.error));
  card.querySelector(".retry").addEventListener("click", () => retryTurn(index));
  card.querySelector(".edit").addEventListener("click", () => openEditor(card, turn));
  card.querySelector(".save").addEventListener("click", () => saveEdit(card, index));
  card.querySelector(".cancel").addEventListener("click", () => closeEditor(card));
  return card;
}

function render(session) {
  state.session = session;
  const list = $("#turns");
  list.replaceChildren(...session.turns.map(turnCard));
  $("#empty").hidden = session.turns.length > 0;
  setBusy(state.busy);
}

// A card for a turn being written: returns the element whose text grows with the stream.
function pendingCard(instruction, index) {
  const card = turnCard({ instruction, code: "" }, index);
  card.classList.add("pending");
  card.querySelector(".actions").hidden = true;
  const existing = $("#turns").children[index];
  if (existing) existing.replaceWith(card); else $("#turns").append(card);
  $("#empty").hidden = true;
  card.scrollIntoView({ block: "nearest" });
  return card.querySelector(".code");
}

// ------------------------------------------------------------------------------- actions

async function run(action) {
  if (state.busy) return;
  showError("");
  setBusy(true);
  try {
    await action();
  } catch (err) {
    showError(err.message);
    if (state.session) {
      try { render(await (await send("GET", `/v1/sessions/${state.session.id}`)).json()); } catch (_) { /* keep the page */ }
    }
  } finally {
    setBusy(false);
  }
}

async function turnStream(path, body, instruction, index) {
  const code = pendingCard(instruction, index);
  let failure = null;
  await stream(path, body, (event) => {
    if (event.type === "delta") code.textContent += event.text;
    else if (event.type === "code") code.textContent = event.code;
    else if (event.type === "turn") render(event.session);
    else if (event.type === "error") failure = event.message;
  });
  if (failure) throw new Error(failure);
}

function newSession() {
  return run(async () => {
    if (state.session) {
      send("DELETE", `/v1/sessions/${state.session.id}`).catch(() => {});
    }
    const settings = {
      temperature: Number($("#temperature").value),
      max_tokens: Math.max(1, Math.round(Number($("#max-tokens").value))),
    };
    render(await (await send("POST", "/v1/sessions", settings)).json());
  });
}

function addTurn(event) {
  event.preventDefault();
  const instruction = $("#instruction").value.trim();
  if (!instruction || !state.session) return;
  return run(async () => {
    await turnStream(`/v1/sessions/${state.session.id}/turns`, { instruction }, instruction, state.session.turns.length);
    $("#instruction").value = "";
  });
}

function retryTurn(index) {
  return run(() => turnStream(`/v1/sessions/${state.session.id}/turns/${index}/retry`, undefined,
    state.session.turns[index].instruction, index));
}

function openEditor(card, turn) {
  card.querySelector(".edit-code").value = turn.code;
  card.querySelector(".editor").hidden = false;
  card.querySelector(".code").hidden = true;
  card.querySelector(".edit-code").focus();
}

function closeEditor(card) {
  card.querySelector(".editor").hidden = true;
  card.querySelector(".code").hidden = false;
}

function saveEdit(card, index) {
  const code = card.querySelector(".edit-code").value;
  return run(async () => {
    render(await (await send("PUT", `/v1/sessions/${state.session.id}/turns/${index}`, { code })).json());
  });
}

function undo() {
  return run(async () => {
    render(await (await send("POST", `/v1/sessions/${state.session.id}/undo`)).json());
  });
}

function download() {
  return run(async () => {
    const response = await send("GET", `/v1/sessions/${state.session.id}/export`);
    const url = URL.createObjectURL(await response.blob());
    const link = document.createElement("a");
    link.href = url;
    link.download = "program.py";
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  });
}

// ------------------------------------------------------------------------------- start

async function loadModelName() {
  try {
    const models = await (await send("GET", "/v1/models")).json();
    const model = models.data[0];
    $("#model").textContent = `${model.id} · ${model.max_model_len} tokens of context`;
  } catch (err) {
    $("#model").textContent = "";
  }
}

$("#composer").addEventListener("submit", addTurn);
$("#instruction").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) addTurn(event);
});
$("#undo").addEventListener("click", undo);
$("#download").addEventListener("click", download);
$("#new-session").addEventListener("click", newSession);

loadModelName().then(newSession);
