// The control panel's script: buttons and forms call the JSON API (with the session's CSRF
// token), pages update in place when /api/v1/events reports a change that concerns them, a
// run's output streams in, and times are shown in the reader's own time zone.
"use strict";

const csrf = document.querySelector('meta[name="csrf-token"]')?.content || "";
const main = document.getElementById("main");
const alertBox = document.getElementById("alert");
const liveState = document.getElementById("live-state");
const texts = document.body.dataset;

function showError(message) {
  alertBox.textContent = message;
  alertBox.hidden = false;
}

function clearError() {
  alertBox.hidden = true;
  alertBox.textContent = "";
}

/** Calls the API; answers the parsed JSON body, or throws an Error with the server's message. */
async function call(method, path, body) {
  const headers = { accept: "application/json" };
  if (csrf) headers["x-csrf-token"] = csrf;
  if (body !== undefined) headers["content-type"] = "application/json";
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      credentials: "same-origin",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch {
    throw new Error(texts.unreachable);
  }
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!response.ok) {
    throw new Error(data?.message || `${response.status} ${response.statusText}`);
  }
  return data;
}

/** Only an address of this site: never another origin, whatever `next` says. */
function localAddress(address) {
  return typeof address === "string" && address.startsWith("/") && !address.startsWith("//")
    && !address.startsWith("/\\") ? address : "/";
}

/** Does what a button or form says follows success. */
function then(what, data) {
  if (what === "refresh") {
    refresh();
  } else if (what === "reload") {
    location.reload();
  } else if (what === "next") {
    location.assign(localAddress(new URLSearchParams(location.search).get("next")));
  } else if (what.startsWith("go:")) {
    const address = what.slice(3).replace(/\{(\w+)\}/g, (_, key) => encodeURIComponent(data?.[key] ?? ""));
    location.assign(localAddress(address));
  }
}

document.addEventListener("click", async (event) => {
  const button = event.target.closest("button[data-path]");
  if (!button) return;
  if (button.dataset.confirmNeeded && !confirm(`${button.textContent.trim()}: ${texts.confirm}`)) return;
  clearError();
  button.disabled = true;
  try {
    const body = button.dataset.body ? JSON.parse(button.dataset.body) : undefined;
    then(button.dataset.then || "refresh", await call(button.dataset.method, button.dataset.path, body));
  } catch (error) {
    showError(error.message);
  } finally {
    button.disabled = false;
  }
});

/** A form's fields as JSON, each by its data-type: lines, pairs (KEY=VALUE lines, an object),
 * list (comma-separated), number, bool, checkbox (true when checked, else left out), flag (true
 * or false), optional (left out when empty) or text; a json-body field is the whole body. */
function formBody(form) {
  const body = {};
  for (const field of form.elements) {
    if (!field.name || field.type === "submit") continue;
    const value = field.value;
    switch (field.dataset.type) {
      case "json-body":
        return JSON.parse(value);
      case "lines":
        body[field.name] = value.split("\n").map((line) => line.replace(/\r$/, "")).filter((line) => line !== "");
        break;
      case "pairs":
        body[field.name] = Object.fromEntries(value.split("\n").map((line) => line.replace(/\r$/, "")).filter((line) => line !== "")
          .map((line) => line.includes("=") ? [line.slice(0, line.indexOf("=")), line.slice(line.indexOf("=") + 1)] : [line, ""]));
        break;
      case "list":
        if (value.trim() !== "") body[field.name] = value.split(",").map((part) => part.trim()).filter(Boolean);
        break;
      case "checkbox":
        if (field.checked) body[field.name] = true;
        break;
      case "flag":
        body[field.name] = field.checked;
        break;
      case "number":
        if (value !== "") body[field.name] = Number(value);
        break;
      case "bool":
        body[field.name] = value === "true";
        break;
      case "optional":
        if (value !== "") body[field.name] = value;
        break;
      default:
        body[field.name] = value;
    }
  }
  return body;
}

document.addEventListener("submit", async (event) => {
  const form = event.target.closest("form[data-path]");
  if (!form) return;
  event.preventDefault();
  clearError();
  const submit = form.querySelector('[type="submit"]');
  if (submit) submit.disabled = true;
  try {
    then(form.dataset.then || "refresh", await call(form.dataset.method, form.dataset.path, formBody(form)));
  } catch (error) {
    showError(error.message);
  } finally {
    if (submit) submit.disabled = false;
  }
});

// Filter forms (method get) leave empty fields out of the address.
document.addEventListener("submit", (event) => {
  const form = event.target.closest('form[method="get"]');
  if (!form) return;
  event.preventDefault();
  const query = new URLSearchParams();
  for (const [key, value] of new FormData(form)) {
    if (value !== "") query.append(key, value);
  }
  const address = new URL(form.action, location.href);
  address.search = query.toString();
  location.assign(localAddress(address.pathname + address.search));
});

document.getElementById("language")?.addEventListener("change", async (event) => {
  try {
    await call("PUT", "/api/v1/me/language", { language: event.target.value });
    location.reload();
  } catch (error) {
    showError(error.message);
  }
});

/** Shows every <time> of `root` in the reader's time zone, keeping UTC in its title. */
function localTimes(root) {
  for (const time of root.querySelectorAll("time[datetime]")) {
    const moment = new Date(time.getAttribute("datetime"));
    if (Number.isNaN(moment.getTime())) continue;
    time.title = time.textContent;
    time.textContent = moment.toLocaleString(document.documentElement.lang);
  }
}

/** What identifies a control across a refresh, so that keyboard focus stays where it was. */
function focusKey(element) {
  if (!element || element === document.body) return null;
  if (element.id) return `#${CSS.escape(element.id)}`;
  if (element.dataset?.path) return `button[data-path="${CSS.escape(element.dataset.path)}"]`;
  return null;
}

let refreshing = false;
let refreshAgain = false;

/** Reads the page again and replaces each of its live parts that changed. */
async function refresh() {
  if (refreshing) {
    refreshAgain = true;
    return;
  }
  refreshing = true;
  try {
    const response = await fetch(location.href, { headers: { accept: "text/html" }, credentials: "same-origin" });
    if (response.redirected && new URL(response.url).pathname === "/login") {
      location.assign(response.url);
      return;
    }
    if (!response.ok) return;
    const fresh = new DOMParser().parseFromString(await response.text(), "text/html");
    const focused = focusKey(document.activeElement);
    for (const part of fresh.querySelectorAll("[data-live][id]")) {
      const current = document.getElementById(part.id);
      if (!current || current.innerHTML === part.innerHTML) continue;
      const adopted = document.importNode(part, true);
      current.replaceWith(adopted);
      localTimes(adopted);
    }
    if (focused && !document.activeElement?.matches?.(focused)) {
      document.querySelector(focused)?.focus();
    }
  } catch {
    // The next event tries again.
  } finally {
    refreshing = false;
    if (refreshAgain) {
      refreshAgain = false;
      refresh();
    }
  }
}

let refreshTimer = null;

/** Refreshes once a burst of events is over (100 ms), not once per event. */
function refreshSoon() {
  clearTimeout(refreshTimer);
  refreshTimer = setTimeout(refresh, 100);
}

function followEvents() {
  const kinds = (main.dataset.refreshOn || "").split(" ").filter(Boolean);
  if (kinds.length === 0) return;
  const events = new EventSource("/api/v1/events");
  const concerns = (run) => (!main.dataset.robot || run.robot === main.dataset.robot)
    && (!main.dataset.run || run.id === main.dataset.run);
  if (kinds.includes("run")) {
    events.addEventListener("run", (event) => {
      if (concerns(JSON.parse(event.data))) refreshSoon();
    });
  }
  if (kinds.includes("agent")) events.addEventListener("agent", refreshSoon);
  if (kinds.includes("activity")) {
    events.addEventListener("activity", (event) => {
      if (!main.dataset.activity || JSON.parse(event.data).id === main.dataset.activity) refreshSoon();
    });
  }
  events.addEventListener("resync", refreshSoon);
  // Whatever changed between rendering the page and (re)connecting is read once more.
  events.addEventListener("open", () => {
    liveState.textContent = "";
    main.dataset.live = "connected";
    refreshSoon();
  });
  events.addEventListener("error", () => {
    liveState.textContent = texts.reconnecting;
    main.dataset.live = "reconnecting";
  });
}

/** Streams a run's output into its <pre>, resuming after the last line seen. */
function followOutput() {
  const output = document.getElementById("output");
  if (!output) return;
  const limit = 20000;
  let lastSeq = 0;
  let ended = false;
  output.textContent = output.dataset.empty;
  output.classList.add("empty");
  const connect = () => {
    const stream = new EventSource(`${output.dataset.stream}?after=${lastSeq}`);
    stream.addEventListener("line", (event) => {
      const line = JSON.parse(event.data);
      if (line.seq <= lastSeq) return;
      lastSeq = line.seq;
      if (output.classList.contains("empty")) {
        output.textContent = "";
        output.classList.remove("empty");
      }
      const atBottom = output.scrollTop + output.clientHeight >= output.scrollHeight - 4;
      const span = document.createElement("span");
      span.className = `${line.stream} level-${line.level || "info"}`;
      span.textContent = `${line.text}${fieldsText(line.fields)}\n`;
      output.append(span);
      while (output.childElementCount > limit) output.firstElementChild.remove();
      if (atBottom) output.scrollTop = output.scrollHeight;
    });
    stream.addEventListener("end", () => {
      ended = true;
      stream.close();
      output.dataset.ended = "true";
      refreshSoon();
    });
    stream.addEventListener("error", () => {
      stream.close();
      if (!ended) setTimeout(connect, 2000);
    });
  };
  connect();
}

/** A record's structured fields as ` key=value` words (nothing when it has none). */
function fieldsText(fields) {
  if (!fields) return "";
  return Object.entries(fields)
    .map(([key, value]) => ` ${key}=${typeof value === "string" ? value : JSON.stringify(value)}`)
    .join("");
}

/**
 * The Logs page's live tail: the latest records that match its filters, then each new one,
 * at the top of the table.
 */
function followLogs() {
  const button = document.getElementById("logs-follow");
  const table = document.getElementById("log-records");
  if (!button || !table) return;
  const body = table.tBodies[0];
  const startLabel = button.textContent;
  const limit = 2000;
  let stream = null;
  let lastId = 0;
  const row = (record) => {
    const tr = document.createElement("tr");
    tr.className = `level-${record.level}`;
    const time = document.createElement("time");
    time.dateTime = record.at;
    time.textContent = record.at;
    const level = document.createElement("span");
    level.className = "level";
    level.textContent = record.level;
    const place = document.createElement("span");
    place.textContent = [record.robot, record.run_id, record.agent && `agent ${record.agent}`,
      record.activity_id, record.node && `server ${record.node}`].filter(Boolean).join(" ");
    const text = document.createElement("span");
    text.textContent = `${record.text}${fieldsText(record.fields)}`;
    for (const part of [time, level, place, text]) {
      const td = document.createElement("td");
      td.append(part);
      tr.append(td);
    }
    localTimes(tr);
    return tr;
  };
  const stop = () => {
    stream?.close();
    stream = null;
    button.textContent = startLabel;
    button.setAttribute("aria-pressed", "false");
  };
  const connect = () => {
    const address = lastId ? `${button.dataset.tail}&cursor=${lastId}` : button.dataset.tail;
    stream = new EventSource(address);
    stream.addEventListener("record", (event) => {
      const record = JSON.parse(event.data);
      if (record.id <= lastId) return;
      lastId = record.id;
      body.prepend(row(record));
      while (body.rows.length > limit) body.lastElementChild.remove();
    });
    stream.addEventListener("error", () => {
      if (!stream) return;
      stream.close();
      setTimeout(() => stream && connect(), 2000);
    });
  };
  button.addEventListener("click", () => {
    if (stream) return stop();
    body.replaceChildren();
    table.hidden = false;
    document.getElementById("logs-empty")?.remove();
    lastId = 0;
    button.textContent = button.dataset.stop;
    button.setAttribute("aria-pressed", "true");
    connect();
  });
}

/**
 * Keeps the screens of graphical sessions (`img[data-screen]`) current: each is loaded again
 * `data-every` ms after the last one arrived, and not at all while the page is hidden, so that
 * nothing is captured while nobody looks.
 */
function watchScreens() {
  const reload = (image) => {
    if (!image.isConnected || image.dataset.live) return;
    if (document.hidden) {
      document.addEventListener("visibilitychange", () => reload(image), { once: true });
      return;
    }
    const url = new URL(image.dataset.src || image.src, location.href);
    image.dataset.src = url.pathname;
    url.searchParams.set("at", Date.now());
    image.src = url.href;
  };
  const follow = (image) => {
    if (image.dataset.watched) return;
    image.dataset.watched = "true";
    const every = Number(image.dataset.every) || 2000;
    let timer = null;
    const next = () => {
      clearTimeout(timer);
      timer = setTimeout(() => reload(image), every);
    };
    image.addEventListener("load", next);
    image.addEventListener("error", next);
    // Something was sent to it: show it again at once.
    image.addEventListener("stale", () => {
      clearTimeout(timer);
      reload(image);
    });
  };
  document.querySelectorAll("img[data-screen]").forEach(follow);
  new MutationObserver(() => document.querySelectorAll("img[data-screen]").forEach(follow))
    .observe(document.body, { childList: true, subtree: true });
}

/**
 * Shows the screens of sessions live where the server can: a WebSocket brings each changed
 * part of the screen, drawn onto a canvas in the image's place. When it closes, the image and
 * its reloading come back.
 */
function liveScreens() {
  const follow = (image) => {
    if (image.dataset.liveTried || !window.WebSocket) return;
    image.dataset.liveTried = "true";
    const address = new URL(image.src, location.href);
    address.protocol = address.protocol === "https:" ? "wss:" : "ws:";
    address.pathname = address.pathname.replace(/\/screenshot$/, "/live");
    address.search = "";
    const socket = new WebSocket(address);
    socket.binaryType = "arraybuffer";
    let canvas = null;
    socket.addEventListener("message", async (event) => {
      if (!image.isConnected) {
        socket.close();
        return;
      }
      if (!canvas) {
        canvas = document.createElement("canvas");
        canvas.width = Number(image.getAttribute("width"));
        canvas.height = Number(image.getAttribute("height"));
        for (const name of ["input", "every"]) {
          if (image.dataset[name]) canvas.dataset[name] = image.dataset[name];
        }
        canvas.className = image.className;
        canvas.tabIndex = image.tabIndex;
        canvas.setAttribute("role", "img");
        canvas.setAttribute("aria-label", image.alt);
        canvas.dataset.liveScreen = "true";
        canvas.dataset.frames = "0";
        image.dataset.live = "true";
        image.hidden = true;
        image.after(canvas);
      }
      const view = new DataView(event.data);
      const bitmap = await createImageBitmap(new Blob([event.data.slice(4)], { type: "image/png" }));
      canvas.getContext("2d").drawImage(bitmap, view.getUint16(0), view.getUint16(2));
      canvas.dataset.frames = String(Number(canvas.dataset.frames) + 1);
    });
    socket.addEventListener("close", () => {
      canvas?.remove();
      if (image.dataset.live) {
        delete image.dataset.live;
        image.hidden = false;
        image.dispatchEvent(new Event("stale"));
      }
    });
  };
  document.querySelectorAll("img[data-screen]").forEach(follow);
  new MutationObserver(() => document.querySelectorAll("img[data-screen]").forEach(follow))
    .observe(document.body, { childList: true, subtree: true });
}

/** The X names of the keys a browser names otherwise. */
const keyNames = {
  Enter: "Return", Backspace: "BackSpace", ArrowLeft: "Left", ArrowRight: "Right",
  ArrowUp: "Up", ArrowDown: "Down",
};

/**
 * Sends the clicks and keys of the operator who controls a session (`img[data-input]`) to it,
 * then shows its screen again at once.
 */
function controlScreens() {
  const send = async (image, events) => {
    clearError();
    try {
      await call("POST", image.dataset.input, { events });
      if (!image.dataset.liveScreen) image.dispatchEvent(new Event("stale"));
    } catch (error) {
      showError(error.message);
    }
  };
  document.addEventListener("click", (event) => {
    const image = event.target.closest("[data-input]");
    if (!image) return;
    const width = image.naturalWidth || image.width;
    const height = image.naturalHeight || image.height;
    const x = Math.round(event.offsetX * width / image.clientWidth);
    const y = Math.round(event.offsetY * height / image.clientHeight);
    image.focus();
    send(image, [{ type: "move", x, y }, { type: "click", button: 1 }]);
  });
  document.addEventListener("keydown", (event) => {
    const image = event.target.closest?.("[data-input]");
    if (!image || event.ctrlKey || event.metaKey || event.altKey) return;
    event.preventDefault();
    const key = keyNames[event.key] || event.key;
    send(image, [key.length === 1 ? { type: "text", text: key } : { type: "key", key }]);
  });
}

/** The field for one argument of an operation, as its JSON Schema property says. */
function argumentField(name, property, required, value) {
  const types = [].concat(property.type || "string");
  const type = types.find((each) => each !== "null") || "string";
  const id = `console-arg-${name}`;
  const label = document.createElement("label");
  label.htmlFor = id;
  label.textContent = required ? `${name} *` : name;
  let field;
  let kind = type;
  if (type === "boolean") {
    field = document.createElement("input");
    field.type = "checkbox";
    field.checked = value === true;
  } else if (type === "array" || type === "object" || name === "stdin") {
    field = document.createElement("textarea");
    field.rows = 3;
    if (type === "array") {
      kind = "lines";
      field.placeholder = "one per line";
      field.value = Array.isArray(value) ? value.join("\n") : "";
    } else if (type === "object") {
      kind = "pairs";
      field.placeholder = "KEY=VALUE, one per line";
      field.value = value && typeof value === "object"
        ? Object.entries(value).map(([key, each]) => `${key}=${each}`).join("\n") : "";
    } else {
      field.value = value ?? "";
    }
  } else {
    field = document.createElement("input");
    field.type = type === "integer" || type === "number" ? "number" : "text";
    field.value = value ?? "";
  }
  field.id = id;
  field.dataset.arg = name;
  field.dataset.kind = kind;
  field.required = required && type !== "boolean";
  const hint = document.createElement("small");
  hint.textContent = property.description || "";
  label.append(" ", hint);
  return [label, field];
}

/** The arguments the console's fields hold, empty optional ones left out. */
function consoleArguments(box) {
  const args = {};
  for (const field of box.querySelectorAll("[data-arg]")) {
    const name = field.dataset.arg;
    const text = field.value;
    switch (field.dataset.kind) {
      case "boolean":
        if (field.checked) args[name] = true;
        break;
      case "lines": {
        const lines = text.split("\n").map((line) => line.replace(/\r$/, "")).filter((line) => line !== "");
        if (lines.length) args[name] = lines;
        break;
      }
      case "pairs": {
        const pairs = text.split("\n").map((line) => line.replace(/\r$/, "")).filter((line) => line !== "");
        if (pairs.length) {
          args[name] = Object.fromEntries(pairs.map((line) => line.includes("=")
            ? [line.slice(0, line.indexOf("=")), line.slice(line.indexOf("=") + 1)] : [line, ""]));
        }
        break;
      }
      case "integer":
      case "number":
        if (text !== "") args[name] = Number(text);
        break;
      default:
        if (text !== "") args[name] = text;
    }
  }
  return args;
}

/** Follows an activity the console started: its output, then its state and result. */
function followActivity(activity) {
  const section = document.getElementById("console-run");
  const output = document.getElementById("console-output");
  const result = document.getElementById("console-result");
  const state = document.getElementById("console-run-state");
  const link = document.getElementById("console-run-link");
  const reason = document.getElementById("console-run-reason");
  section.hidden = false;
  output.textContent = "";
  result.textContent = "";
  reason.textContent = "";
  link.textContent = activity.id;
  link.href = `/activities/${activity.id}`;
  const show = (shown) => {
    state.textContent = shown.state;
    state.className = `state state-${shown.state}`;
    reason.textContent = shown.reason || "";
    if (shown.result !== undefined) result.textContent = JSON.stringify(shown.result, null, 2);
  };
  show(activity);
  const stream = new EventSource(`/api/v1/activities/${activity.id}/output/stream`);
  stream.addEventListener("line", (event) => {
    const line = JSON.parse(event.data);
    const span = document.createElement("span");
    span.className = line.stream;
    span.textContent = `${line.text}\n`;
    output.append(span);
    output.scrollTop = output.scrollHeight;
  });
  stream.addEventListener("end", (event) => {
    stream.close();
    show(JSON.parse(event.data));
    section.dataset.ended = "true";
    refreshSoon();
  });
  stream.addEventListener("error", () => stream.close());
}

/** The console: operations offered for the kind of target typed, their arguments' form made
 * from their schema, run and followed; an earlier activity's values filled in from the
 * address's fragment (its Repeat link). */
function consoleForm() {
  const form = document.getElementById("console-form");
  if (!form) return;
  const target = form.elements.target;
  const operation = form.elements.operation;
  const box = document.getElementById("console-args");
  const legend = box.querySelector("legend");
  const description = document.getElementById("console-description");
  const kindOf = (text) => text.trim() === "server" ? "server" : "agent";
  const render = (values = {}) => {
    box.replaceChildren(legend);
    const chosen = operation.selectedOptions[0];
    description.textContent = chosen?.title || "";
    const schema = JSON.parse(chosen?.dataset.schema || "{}");
    const required = schema.required || [];
    for (const [name, property] of Object.entries(schema.properties || {})) {
      box.append(...argumentField(name, property, required.includes(name), values[name]));
    }
  };
  const offer = () => {
    const kind = kindOf(target.value);
    for (const option of operation.options) option.hidden = option.dataset.kind !== kind;
    if (operation.selectedOptions[0]?.hidden) {
      operation.value = [...operation.options].find((option) => !option.hidden)?.value || "";
      render();
    }
  };
  target.addEventListener("input", offer);
  operation.addEventListener("change", () => render());
  const asked = new URLSearchParams(location.hash.slice(1));
  if (asked.get("target")) target.value = asked.get("target");
  offer();
  if (asked.get("operation")) operation.value = `${kindOf(target.value)}:${asked.get("operation")}`;
  if (asked.get("mode")) form.elements.mode.value = asked.get("mode");
  let values = {};
  try {
    values = JSON.parse(asked.get("args") || "{}");
  } catch {
    values = {};
  }
  render(values);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearError();
    const submit = form.querySelector('[type="submit"]');
    submit.disabled = true;
    try {
      const activity = await call("POST", "/api/v1/activities", {
        target: target.value.trim(),
        operation: operation.selectedOptions[0].dataset.name,
        args: consoleArguments(box),
        mode: form.elements.mode.value,
        timeout_seconds: Number(form.elements.timeout.value) || undefined,
      });
      followActivity(activity);
      refreshSoon();
    } catch (error) {
      showError(error.message);
    } finally {
      submit.disabled = false;
    }
  });
}

/** An agent's update from the agents page: the binary is uploaded, then `agent.update` asked
 * for it; the activity's page follows it. */
document.addEventListener("submit", async (event) => {
  const form = event.target.closest("form.agent-update");
  if (!form) return;
  event.preventDefault();
  clearError();
  const file = form.elements.binary.files[0];
  if (!file) return;
  const submit = form.querySelector('[type="submit"]');
  submit.disabled = true;
  try {
    const headers = { "content-type": "application/octet-stream", accept: "application/json" };
    if (csrf) headers["x-csrf-token"] = csrf;
    const uploaded = await fetch("/api/v1/blobs", { method: "POST", headers, body: file, credentials: "same-origin" });
    const blob = await uploaded.json();
    if (!uploaded.ok) throw new Error(blob?.message || `${uploaded.status}`);
    const activity = await call("POST", "/api/v1/activities", {
      target: form.dataset.agent, operation: "agent.update", args: { sha256: blob.sha256 }, mode: "parallel",
    });
    location.assign(`/activities/${activity.id}`);
  } catch (error) {
    showError(error.message);
  } finally {
    submit.disabled = false;
  }
});

localTimes(document);
followEvents();
consoleForm();
followOutput();
followLogs();
watchScreens();
liveScreens();
controlScreens();
