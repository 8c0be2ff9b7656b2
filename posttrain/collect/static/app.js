// The labelling page: fetches one item at a time from the JSON API and posts the label back.
// Model text is only ever inserted with textContent (never innerHTML): it is shown as text, never run.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const state = { annotator: "", item: null, order: [], thumbs: [], focus: 0, busy: false, dragged: null };
  const KEYS = {
    rank: [["↑ ↓ or K J", "move the focus"], ["Shift+↑ ↓ or Shift+K J", "move the focused response up or down"],
           ["1-9", "focus response n"], ["Enter", "submit the ranking"]],
    ab: [["A", "A is better"], ["B", "B is better"], ["T", "tie"], ["X", "both bad"]],
    thumbs: [["↑ ↓ or K J", "move the focus"], ["U / D", "thumbs up / down on the focused response"],
             ["Enter", "submit"]],
    all: [["S", "skip"], ["Z", "undo last"], ["?", "show or hide this help"]],
  };

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function button(label, key, action, extraClass) {
    const node = el("button", extraClass || "");
    node.type = "button";
    node.dataset.action = action;
    node.append(label + " ");
    if (key) node.append(el("kbd", "", key));
    return node;
  }

  function say(text, isError) {
    $("message").textContent = text;
    $("message").className = isError ? "error" : "";
  }

  async function api(method, path, body) {
    const options = { method, headers: {}, credentials: "same-origin" };
    if (body !== undefined) {
      options.headers["Content-Type"] = "application/json";
      options.body = JSON.stringify(body);
    }
    const response = await fetch(path, options);
    const data = await response.json().catch(() => ({ error: `HTTP ${response.status}` }));
    if (!response.ok) throw new Error(data.error || `HTTP ${response.status}`);
    return data;
  }

  function showProgress(progress) {
    if (!progress) return;
    $("progress").textContent = `${progress.done} done · ${progress.left} left · ${progress.total} items`;
  }

  function renderPrompt(prompt) {
    const box = $("prompt");
    box.replaceChildren();
    const messages = typeof prompt === "string" ? [{ role: "user", content: prompt }] : prompt;
    for (const message of messages) {
      const node = el("div", "msg");
      node.append(el("div", "role", message.role), el("div", "text", message.content));
      box.append(node);
    }
  }

  function card(position, tag) {
    const node = el("li", "card");
    node.dataset.pos = String(position);
    const head = el("div", "card-head");
    head.append(el("span", "tag", tag));
    node.append(head, el("div", "text", state.item.candidates[position].text));
    return node;
  }

  function renderRank() {
    const list = $("candidates");
    list.replaceChildren();
    state.order.forEach((position, rank) => {
      const node = card(position, `#${rank + 1}`);
      node.draggable = true;
      node.classList.toggle("focus", rank === state.focus);
      const head = node.querySelector(".card-head");
      head.append(button("↑", "", "up"), button("↓", "", "down"));
      head.querySelector('[data-action="up"]').addEventListener("click", () => move(rank, rank - 1));
      head.querySelector('[data-action="down"]').addEventListener("click", () => move(rank, rank + 1));
      node.addEventListener("dragstart", (event) => {
        state.dragged = rank;
        node.classList.add("dragging");
        event.dataTransfer.setData("text/plain", String(rank));
      });
      node.addEventListener("dragend", () => node.classList.remove("dragging"));
      node.addEventListener("dragover", (event) => event.preventDefault());
      node.addEventListener("drop", (event) => {
        event.preventDefault();
        if (state.dragged !== null) move(state.dragged, rank);
        state.dragged = null;
      });
      list.append(node);
    });
  }

  function move(from, to) {
    if (to < 0 || to >= state.order.length || from === to) return;
    const [position] = state.order.splice(from, 1);
    state.order.splice(to, 0, position);
    state.focus = to;
    renderRank();
  }

  function renderThumbs() {
    const list = $("candidates");
    list.replaceChildren();
    state.item.candidates.forEach((_, position) => {
      const node = card(position, `${position + 1}`);
      const value = state.thumbs[position];
      node.classList.toggle("focus", position === state.focus);
      node.classList.toggle("up", value === true);
      node.classList.toggle("down", value === false);
      const up = button("▲ Up", "U", "thumb-up");
      const down = button("▼ Down", "D", "thumb-down");
      up.setAttribute("aria-pressed", String(value === true));
      down.setAttribute("aria-pressed", String(value === false));
      up.addEventListener("click", () => setThumb(position, true, false));
      down.addEventListener("click", () => setThumb(position, false, false));
      node.querySelector(".card-head").append(up, down);
      list.append(node);
    });
  }

  function setThumb(position, value, advance) {
    state.thumbs[position] = value;
    state.focus = advance ? Math.min(position + 1, state.thumbs.length - 1) : position;
    renderThumbs();
  }

  function renderAb() {
    const list = $("candidates");
    list.replaceChildren(card(0, "A"), card(1, "B"));
  }

  function renderActions(mode) {
    const actions = $("actions");
    actions.replaceChildren();
    if (mode === "ab") {
      for (const [label, key, choice] of [["A is better", "A", "a"], ["B is better", "B", "b"],
                                          ["Tie", "T", "tie"], ["Both bad", "X", "both_bad"]]) {
        const node = button(label, key, `choose-${choice}`, "primary");
        node.addEventListener("click", () => submit({ choice }));
        actions.append(node);
      }
    } else {
      const node = button(mode === "rank" ? "Submit ranking" : "Submit", "Enter", "submit", "primary");
      node.addEventListener("click", submitCurrent);
      actions.append(node);
    }
  }

  const INSTRUCTIONS = {
    rank: "Order the responses from best (top) to worst: drag them, use the arrows, or the keyboard.",
    ab: "Which response is better?",
    thumbs: "Give each response a thumbs up (good) or down (bad), then submit.",
  };

  function render(item, progress) {
    state.item = item;
    state.focus = 0;
    showProgress(progress);
    document.body.dataset.item = item ? String(item.item_id) : "none";
    $("prompt-box").hidden = !item;
    $("task").hidden = !item;
    if (!item) {
      say("Nothing left to label for you. Thank you!");
      return;
    }
    $("mode").textContent = item.mode;
    $("task").className = item.mode;
    $("instructions").textContent = INSTRUCTIONS[item.mode];
    renderPrompt(item.prompt);
    state.order = item.candidates.map((_, i) => i);
    state.thumbs = item.candidates.map(() => null);
    if (item.mode === "rank") renderRank();
    else if (item.mode === "ab") renderAb();
    else renderThumbs();
    renderActions(item.mode);
    renderKeys(item.mode);
  }

  function renderKeys(mode) {
    const list = $("keys");
    list.replaceChildren();
    for (const [key, text] of [...KEYS[mode], ...KEYS.all]) {
      const line = el("li");
      line.append(el("kbd", "", key), ` ${text}`);
      list.append(line);
    }
  }

  async function step(request, message) {
    if (state.busy || !state.annotator) return;
    state.busy = true;
    try {
      const result = await request();
      // The label is committed (the POST returned) before the next item is fetched and shown.
      const next = await api("GET", `/api/next?annotator=${encodeURIComponent(state.annotator)}`);
      render(next.item, next.progress);
      if (next.item) say(typeof message === "function" ? message(result) : message);
    } catch (error) {
      say(error.message, true);
    } finally {
      state.busy = false;
    }
  }

  function submit(value) {
    if (!state.item) return;
    const body = { annotator: state.annotator, item_id: state.item.item_id, value };
    step(() => api("POST", "/api/label", body), "Saved.");
  }

  function submitCurrent() {
    if (!state.item) return;
    if (state.item.mode === "rank") submit({ ranking: [...state.order] });
    else if (state.item.mode === "thumbs") {
      const missing = state.thumbs.findIndex((t) => t === null);
      if (missing >= 0) say(`Response ${missing + 1} has no thumb yet.`, true);
      else submit({ thumbs: [...state.thumbs] });
    }
  }

  function skip() {
    if (!state.item) return;
    const body = { annotator: state.annotator, item_id: state.item.item_id };
    step(() => api("POST", "/api/skip", body), "Skipped.");
  }

  function undo() {
    step(() => api("POST", "/api/undo", { annotator: state.annotator }),
      (result) => (result.undone === null ? "Nothing to undo." : "Undone: this item is back."));
  }

  function onKey(event) {
    const target = event.target;
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    if (target instanceof HTMLInputElement || target instanceof HTMLTextAreaElement) return;
    const key = event.key.length === 1 ? event.key.toLowerCase() : event.key;
    if (key === "?") { $("help").open = !$("help").open; return; }
    if (key === "s") { skip(); return; }
    if (key === "z") { undo(); return; }
    if (!state.item) return;
    const mode = state.item.mode;
    const count = state.item.candidates.length;
    if (mode === "ab") {
      const choice = { a: "a", b: "b", t: "tie", x: "both_bad" }[key];
      if (choice) { event.preventDefault(); submit({ choice }); }
      return;
    }
    const up = key === "ArrowUp" || key === "k";
    const down = key === "ArrowDown" || key === "j";
    if (key === "Enter") { event.preventDefault(); submitCurrent(); }
    else if (mode === "rank" && event.shiftKey && (up || down)) {
      event.preventDefault();
      move(state.focus, state.focus + (up ? -1 : 1));
    } else if (up || down) {
      event.preventDefault();
      state.focus = Math.max(0, Math.min(count - 1, state.focus + (up ? -1 : 1)));
      if (mode === "rank") renderRank(); else renderThumbs();
    } else if (mode === "rank" && /^[1-9]$/.test(key) && Number(key) <= count) {
      state.focus = Number(key) - 1;
      renderRank();
    } else if (mode === "thumbs" && (key === "u" || key === "d")) {
      setThumb(state.focus, key === "u", true);
    }
  }

  function start(name) {
    state.annotator = name.trim();
    if (!state.annotator) return;
    localStorage.setItem("posttrain.annotator", state.annotator);
    $("annotator").value = state.annotator;
    $("annotator").blur();
    state.busy = false;
    step(async () => null, "");
  }

  $("who").addEventListener("submit", (event) => {
    event.preventDefault();
    start($("annotator").value);
  });
  $("skip").addEventListener("click", skip);
  $("undo").addEventListener("click", undo);
  document.addEventListener("keydown", onKey);

  // The token (if any) now lives in an HttpOnly cookie; keep it out of the address bar and history.
  const params = new URLSearchParams(location.search);
  const fromUrl = params.get("annotator");
  if (params.has("token")) history.replaceState(null, "", location.pathname);
  const saved = fromUrl || localStorage.getItem("posttrain.annotator") || "";
  if (saved) start(saved);
  else say("Type your name and press Start.");
})();
