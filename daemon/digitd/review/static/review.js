// digitd review: the page. One result at a time; a digit's verdict is one key, a number's
// correction is typed as its digits and sent with Enter (its doubtful digits are marked); a
// digit that is really a number (`n`) is typed the same way.
// Verdicts are shown as done at once and sent in order in the background, so a fast reviewer
// never waits for the server; `u` sends an undo after them and brings the result back.
"use strict";

const token = document.querySelector('meta[name="digitd-token"]').content;
const session = Array.from(crypto.getRandomValues(new Uint8Array(12)),
  (b) => b.toString(16).padStart(2, "0")).join("");
const state = {
  kind: "low_confidence",
  digit: "",
  items: [],          // the queue as this page holds it; items[0] is shown
  skipped: new Set(), // ids skipped with Space in this view
  judged: new Set(),  // ids this page gave a verdict on (not undone)
  history: [],        // [{item, verdict}] for undo, newest last
  mine: 0,
  started: Date.now(),
  filterKey: false,   // `f` was pressed: the next digit picks the filter
  typed: "",          // a number's correction being typed
  numbering: false,   // `n` on a digit: it is really a number, being typed
  loading: null,
};
let sending = Promise.resolve();
let inflight = 0;

const $ = (id) => document.getElementById(id);

function setInflight(delta) {
  inflight += delta;
  document.body.dataset.inflight = String(inflight);
}

function say(text, error = false) {
  const status = $("status");
  status.textContent = text;
  status.classList.toggle("error", error);
}

function showCounts(counts) {
  if (!counts) return;
  $("count-queue").textContent = counts.queue;
  $("count-audit").textContent = counts.audit_queue;
  $("count-hour").textContent = counts.verdicts_last_hour;
  $("count-audit-errors").textContent = counts.audit_error_rate === null ? "–"
    : `${(100 * counts.audit_error_rate).toFixed(1)}% of ${counts.audited}`;
}

function percent(p) {
  return `${(100 * p).toFixed(p >= 0.995 || p < 0.1 ? 1 : 0)}%`;
}

function isNumber(item) {
  return item.digit === null;
}

function typesNumber(item) {
  // A number, or a digit result the reviewer says holds a number (`n`): typed as a string.
  return isNumber(item) || state.numbering;
}

function clearTyped() {
  state.typed = "";
  state.numbering = false;
}

function showDigits(item) {
  // The string read, one span per digit; a number's doubtful digits are marked.
  const parts = item.parts && item.parts.length === item.digits.length ? item.parts : null;
  $("digit").replaceChildren(...Array.from(item.digits, (ch, k) => {
    const span = document.createElement("span");
    span.textContent = ch;
    if (parts && parts[k].doubtful) {
      span.className = "doubtful";
      span.title = `doubtful: ${percent(parts[k].confidence)}`;
    }
    return span;
  }));
}

function showTyped(item) {
  const typed = $("typed");
  typed.hidden = !typesNumber(item);
  typed.textContent = state.typed;
  typed.classList.toggle("empty", state.typed === "");
}

function topRows(item) {
  // A digit: its three most probable values. A number: for each doubtful digit, its three.
  if (!isNumber(item)) return item.top;
  return (item.parts || []).flatMap((part, k) => part.doubtful
    ? [[`${k + 1}: ${part.top.map(([d, p]) => `${d} ${percent(p)}`).join(" · ")}`,
      part.confidence]] : []);
}

function render() {
  const item = state.items[0];
  $("card").hidden = !item;
  $("empty").hidden = Boolean(item);
  $("card").dataset.id = item ? item.id : "";
  if (!item) return;
  const preview = $("preview");
  if (item.preview) preview.src = item.preview; else preview.removeAttribute("src");
  showDigits(item);
  showTyped(item);
  $("card").classList.toggle("number", isNumber(item));
  $("confidence").textContent = percent(item.confidence);
  $("kind").textContent = item.kind === "audit" ? "audit sample" : "";
  const top = $("top");
  top.replaceChildren(...topRows(item).map(([digit, p]) => {
    const li = document.createElement("li");
    const d = document.createElement("span");
    d.textContent = digit;
    const bar = document.createElement("span");
    bar.className = "bar";
    bar.style.width = `${Math.max(0.5, 100 * p)}%`;
    const value = document.createElement("span");
    value.className = "p";
    value.textContent = percent(p);
    li.append(d, bar, value);
    return li;
  }));
  $("file").textContent = item.file;
  $("time").textContent = item.received_at.replace("T", " ").replace(/\.\d+Z$/, " UTC");
  $("time").dateTime = item.received_at;
}

async function load() {
  if (state.loading) return state.loading;
  const params = new URLSearchParams({ kind: state.kind, limit: "50", session });
  if (state.digit !== "") params.set("digit", state.digit);
  state.loading = (async () => {
    try {
      const response = await fetch(`/api/queue?${params}`, { cache: "no-store" });
      const answer = await response.json();
      if (!response.ok) throw new Error(answer.error || response.statusText);
      const held = new Set(state.items.map((i) => i.id));
      for (const item of answer.items) {
        if (!held.has(item.id) && !state.skipped.has(item.id) && !state.judged.has(item.id)) {
          state.items.push(item);
        }
      }
      showCounts(answer.counts);
      render();
    } catch (error) {
      say(`could not load the queue: ${error.message}`, true);
    } finally {
      state.loading = null;
      document.body.dataset.loaded = String(Number(document.body.dataset.loaded) + 1);
    }
  })();
  return state.loading;
}

function post(path, body) {
  // Requests go out one after another, in the order the keys were pressed.
  setInflight(1);
  const request = sending.then(async () => {
    const response = await fetch(path, {
      method: "POST",
      headers: { "Content-Type": "application/json", "X-Digitd-Token": token },
      body: JSON.stringify(body),
    });
    const answer = await response.json();
    if (!response.ok) throw new Error(answer.error || response.statusText);
    showCounts(answer.counts);
    return answer;
  });
  sending = request.catch(() => {}).finally(() => setInflight(-1));
  return request;
}

function give(verdict, label) {
  const item = state.items.shift();
  if (!item) return;
  const body = { id: item.id, verdict };
  const reviewer = $("reviewer").value.trim();
  if (reviewer) body.reviewer = reviewer;
  if (label !== undefined) body.label = label;
  state.judged.add(item.id);
  state.history.push({ item, verdict: body });
  state.mine += 1;
  clearTyped();
  $("count-mine").textContent = state.mine;
  const what = verdict === "not_a_digit" ? "not a digit"
    : verdict === "confirmed" ? `confirmed ${item.digits}` : `corrected ${item.digits} → ${label}`;
  say(`${item.file}: ${what}  (u to undo)`);
  post("/api/verdict", body).catch((error) => {
    say(`${item.file}: verdict not recorded: ${error.message}`, true);
    state.history = state.history.filter((h) => h.item.id !== item.id);
    state.mine -= 1;
    $("count-mine").textContent = state.mine;
    state.judged.delete(item.id);
    state.items.unshift(item);
    render();
  });
  render();
  if (state.items.length < 10) load();
}

function undo() {
  const last = state.history.pop();
  if (!last) {
    say("nothing to undo");
    return;
  }
  state.judged.delete(last.item.id);
  clearTyped();
  state.mine -= 1;
  $("count-mine").textContent = state.mine;
  state.items = [last.item, ...state.items.filter((i) => i.id !== last.item.id)];
  say(`${last.item.file}: verdict withdrawn`);
  const body = { id: last.item.id };
  const reviewer = $("reviewer").value.trim();
  if (reviewer) body.reviewer = reviewer;
  post("/api/undo", body).catch((error) => {
    say(`${last.item.file}: undo failed: ${error.message}`, true);
  });
  render();
}

function skip() {
  const item = state.items.shift();
  if (!item) return;
  clearTyped();
  state.skipped.add(item.id);
  say(`${item.file}: skipped`);
  render();
  if (state.items.length < 10) load();
}

function switchView(kind, digit) {
  state.kind = kind;
  state.digit = digit;
  state.items = [];
  clearTyped();
  state.skipped.clear();
  for (const b of document.querySelectorAll("button.view")) {
    b.classList.toggle("on", b.dataset.kind === kind);
  }
  for (const b of document.querySelectorAll("button.filter")) {
    b.classList.toggle("on", b.dataset.digit === digit);
  }
  render();
  load();
}

function typing(item, key) {
  // A number under review (or a digit said to be one, `n`): digits build the correction,
  // Backspace and Escape edit it, Enter sends it (nothing typed: a number is confirmed; a
  // digit goes back to its one-key verdicts, as Escape with nothing typed does). Returns
  // false for the keys it leaves alone.
  if (/^[0-9]$/.test(key)) {
    if (state.typed.length < 64) state.typed += key;
  } else if (key === "Backspace") {
    state.typed = state.typed.slice(0, -1);
  } else if (key === "Escape" || (key === "Enter" && state.typed === "" && !isNumber(item))) {
    if (state.typed === "") state.numbering = false;
    state.typed = "";
  } else if (key === "Enter") {
    const typed = state.typed;
    if (typed === "" || typed === item.digits) give("confirmed");
    else give("corrected", typed);
    return true;
  } else {
    return false;
  }
  showTyped(item);
  return true;
}

document.addEventListener("keydown", (event) => {
  if (event.target instanceof HTMLInputElement) {
    if (event.key === "Enter" || event.key === "Escape") event.target.blur();
    return;
  }
  if (event.ctrlKey || event.altKey || event.metaKey) return;
  const key = event.key;
  if (state.filterKey) {
    state.filterKey = false;
    if (/^[0-9]$/.test(key)) switchView(state.kind, key);
    else if (key === "f" || key === "Escape") switchView(state.kind, "");
    event.preventDefault();
    return;
  }
  const item = state.items[0];
  if (item && typesNumber(item) && typing(item, key)) {
    event.preventDefault();
    return;
  }
  if (item && key === "n" && !isNumber(item)) {  // this digit is really a number: type it
    state.numbering = true;
    showTyped(item);
    event.preventDefault();
    return;
  }
  if (/^[0-9]$/.test(key)) {
    if (item) give(Number(key) === item.digit ? "confirmed" : "corrected", Number(key));
  } else if (key === "Enter") {
    give("confirmed");
  } else if (key === "x" || key === "X") {
    give("not_a_digit");
  } else if (key === " ") {
    skip();
  } else if (key === "u" || key === "U") {
    undo();
  } else if (key === "a") {
    switchView(state.kind === "audit" ? "low_confidence" : "audit", state.digit);
  } else if (key === "f") {
    state.filterKey = true;
    say("filter: press a digit, or f for all");
  } else {
    return;
  }
  event.preventDefault();
});

for (const b of document.querySelectorAll("button.view")) {
  b.addEventListener("click", () => { b.blur(); switchView(b.dataset.kind, state.digit); });
}
for (const b of document.querySelectorAll("button.filter")) {
  b.addEventListener("click", () => { b.blur(); switchView(state.kind, b.dataset.digit); });
}
setInterval(() => { if (state.items.length < 10) load(); }, 15000);
load();
