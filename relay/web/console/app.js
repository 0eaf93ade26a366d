// The relay's web console: the REST API (docs/api.md) with an API token, and a terminal for
// the ssh service over the source-connect WebSocket (docs/protocol.md). Plain ES module, no
// build step; every piece of data reaches the page as text nodes, never as HTML.

import { Screen, SshLogin, keyToText } from "/console/terminal.js";
import { AuditView } from "/console/audit.js";

const $ = (id) => document.getElementById(id);
const SESSION_KEY = "iot-tunnel-console.session";
const PAGE_SIZE = 20;
const REFRESH_EVERY_MS = 10000;
const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
const DEVICE_RE = /^[A-Za-z0-9_-]{1,128}$/;
const PASTE_CHUNK = 1500;   // characters per command message: stays under the 10 KB limit, escaping included

const state = {
  project: null,
  token: null,          // the API token: in memory, and in this tab's sessionStorage
  filter: { search: "", status: "" },
  markers: [null],      // page.marker of each page visited; the last one is the current page's start
  tunnels: [],
  count: 0,
  nextMarker: null,
  selected: new Set(),
  refreshTimer: null,
  listSeq: 0,           // only the latest list request is shown
  followSeq: 0,         // only the latest followSourceState runs
  terminal: null,
  view: "tunnels",      // or "audit"
  audit: null,          // the AuditView (audit.js)
};

// -- helpers --------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, body) {
    super((body && body.error_msg) || `HTTP ${status}`);
    this.status = status;
    this.code = body && body.error_code;
  }
}

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "class") node.className = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (value !== undefined && value !== null && value !== false) node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

// Request ids: random, so that they are not reused across reconnections (the relay refuses
// a reused one). crypto.getRandomValues works outside secure contexts too.
function newRequestId(prefix) {
  const bytes = crypto.getRandomValues(new Uint8Array(8));
  return prefix + "-" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

// "20261124T161807Z" -> "2026-11-24 16:18:07"
function formatTime(value) {
  if (!value) return "";
  const m = /^(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})Z$/.exec(value);
  return m ? `${m[1]}-${m[2]}-${m[3]} ${m[4]}:${m[5]}:${m[6]}` : value;
}

function badge(text, kind) {
  return el("span", { class: `badge badge-${kind}` }, text);
}

let toastTimer = null;
function toast(message, kind = "info") {
  const box = $("toast");
  box.textContent = message;
  box.className = `toast toast-${kind}`;
  box.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { box.hidden = true; }, kind === "error" ? 9000 : 5000);
}

function confirmDialog(title, text, { ok = "OK", danger = false, extra = null } = {}) {
  const dialog = $("confirm-dialog");
  $("confirm-title").textContent = title;
  $("confirm-text").textContent = text;
  $("confirm-extra").replaceChildren(...(extra ? [extra] : []));
  const okButton = $("confirm-ok");
  okButton.textContent = ok;
  okButton.className = danger ? "btn btn-danger" : "btn btn-primary";
  return new Promise((resolve) => {
    const finish = (answer) => {
      okButton.removeEventListener("click", onOk);
      $("confirm-cancel").removeEventListener("click", onCancel);
      dialog.removeEventListener("cancel", onCancel);
      dialog.close();
      resolve(answer);
    };
    const onOk = () => finish(true);
    const onCancel = (event) => { event.preventDefault(); finish(false); };
    okButton.addEventListener("click", onOk);
    $("confirm-cancel").addEventListener("click", onCancel);
    dialog.addEventListener("cancel", onCancel);
    dialog.showModal();
    okButton.focus();
  });
}

// -- the REST API ---------------------------------------------------------------------------

async function api(method, path, body) {
  const headers = { "X-Auth-Token": state.token };
  const init = { method, headers, cache: "no-store", credentials: "omit", referrerPolicy: "no-referrer" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(`/v5/iot/${encodeURIComponent(state.project)}/tunnels${path}`, init);
  if (response.status === 204) return null;
  let data = null;
  try { data = await response.json(); } catch { data = null; }
  if (!response.ok) {
    const error = new ApiError(response.status, data);
    if (response.status === 401 && state.token) {     // the token was removed from the relay
      logout("The relay no longer accepts this API token: log in again.");
    }
    throw error;
  }
  return data;
}

// GET another path of the project (the audit trail, recordings): JSON, or the text with {text: true}.
async function projectApi(path, { text = false } = {}) {
  const init = { method: "GET", headers: { "X-Auth-Token": state.token }, cache: "no-store", credentials: "omit",
    referrerPolicy: "no-referrer" };
  const response = await fetch(`/v5/iot/${encodeURIComponent(state.project)}${path}`, init);
  if (response.ok) return text ? response.text() : response.json();
  let data = null;
  try { data = await response.json(); } catch { data = null; }
  if (response.status === 401 && state.token) logout("The relay no longer accepts this API token: log in again.");
  throw new ApiError(response.status, data);
}

function showView(name) {
  state.view = name;
  $("tunnels-view").hidden = name !== "tunnels";
  $("terminal-view").hidden = name !== "tunnels" || !state.terminal;
  $("audit-view").hidden = name !== "audit";
  for (const [id, view] of [["tab-tunnels", "tunnels"], ["tab-audit", "audit"]]) {
    $(id).classList.toggle("tab-active", name === view);
    $(id).setAttribute("aria-pressed", String(name === view));
  }
  if (name !== "audit" && state.audit) state.audit.player.pause();
}

function showAudit(filter) {
  showView("audit");
  return state.audit.apply(filter || {});
}

function reportError(error, what) {
  toast(`${what}: ${error.message}${error.code ? ` (${error.code})` : ""}`, "error");
}

// -- session --------------------------------------------------------------------------------

function saveSession() {
  try {
    sessionStorage.setItem(SESSION_KEY, JSON.stringify({ project: state.project, token: state.token }));
  } catch { /* storage disabled: the session lives in memory only */ }
}

function loadSession() {
  try {
    const saved = JSON.parse(sessionStorage.getItem(SESSION_KEY) || "null");
    if (saved && saved.project && saved.token) return saved;
  } catch { /* nothing saved */ }
  return null;
}

async function login(project, token) {
  state.project = project;
  state.token = token;
  state.markers = [null];
  await loadTunnels();            // throws on a token the relay does not know
  saveSession();
  $("session-project").textContent = project;
  $("session").hidden = false;
  $("tabs").hidden = false;
  $("login-view").hidden = true;
  showView("tunnels");
  startAutoRefresh();
}

function logout(message) {
  closeTerminal();
  state.project = null;
  state.token = null;
  state.tunnels = [];
  state.selected.clear();
  try { sessionStorage.removeItem(SESSION_KEY); } catch { /* ignore */ }
  stopAutoRefresh();
  $("session").hidden = true;
  $("tabs").hidden = true;
  $("tunnels-view").hidden = true;
  $("audit-view").hidden = true;
  if (state.audit) state.audit.reset();
  $("secrets").hidden = true;
  $("secrets-list").replaceChildren();
  $("login-view").hidden = false;
  $("login-token").value = "";
  $("login-error").textContent = message || "";
  $("login-token").focus();
}

function startAutoRefresh() {
  stopAutoRefresh();
  state.refreshTimer = setInterval(() => {
    if (!document.hidden && state.token) loadTunnels().catch(() => {});
  }, REFRESH_EVERY_MS);
}

function stopAutoRefresh() {
  clearInterval(state.refreshTimer);
  state.refreshTimer = null;
}

// -- the tunnel list ------------------------------------------------------------------------

function listQuery() {
  const params = new URLSearchParams({ limit: String(PAGE_SIZE) });
  const search = state.filter.search;
  if (search) params.set(UUID_RE.test(search) ? "tunnel_id" : "device_id", search);
  if (state.filter.status) params.set("status", state.filter.status);
  const marker = state.markers[state.markers.length - 1];
  if (marker) params.set("marker", marker);
  return "?" + params.toString();
}

async function loadTunnels() {
  const seq = ++state.listSeq;
  const answer = await api("GET", listQuery());
  if (seq !== state.listSeq) return;   // a newer request (a refresh, a search) is on its way
  state.tunnels = answer.tunnels;
  state.count = answer.page.count;
  state.nextMarker = answer.page.marker;
  const present = new Set(state.tunnels.map((t) => t.tunnel_id));
  for (const id of [...state.selected]) if (!present.has(id)) state.selected.delete(id);
  renderTunnels();
}

// -- what the table's states mean to an operator (docs/console.md) ---------------------------
// The one place that turns the API's values into words. A value the relay adds later is shown
// as itself (lower case) until it gets a label here.

const NOTIFY_LABELS = {
  PENDING: { text: "waiting for broker", kind: "warn",
    title: "The MQTT notify is in the relay's outbox: the broker has not taken it yet." },
  DELIVERED: { text: "sent to broker", kind: "idle",
    title: "The MQTT broker took the notify. That does not say the device got it: see Device end." },
};
const NO_NOTIFY_TITLE = "No MQTT notify (the relay has no broker, or the tunnel was created without one).";
// A closed tunnel's close_reason, beside its CLOSED badge ("closed" would only repeat it).
const CLOSE_REASON_LABELS = { closed: "", expired: "expired" };

function labelOf(labels, value) {
  return labels[value] || { text: String(value).toLowerCase().replace(/_/g, " "), kind: "idle", title: String(value) };
}

function notifyCell(t) {
  if (t.status !== "OPEN") return el("span", { class: "muted" }, "—");
  if (!t.notify_status) return el("span", { class: "muted", title: NO_NOTIFY_TITLE }, "—");
  const label = labelOf(NOTIFY_LABELS, t.notify_status);
  const node = badge(label.text, label.kind);
  node.title = label.title;
  return node;
}

// A tunnel end: "connected" or "not connected" while the tunnel is open; nothing once it is closed.
function endCell(t, connectState, missingKind) {
  if (t.status !== "OPEN") return el("span", { class: "muted" }, "—");
  const connected = connectState && connectState.status === "CONNECTED";
  const node = badge(connected ? "connected" : "not connected", connected ? "ok" : missingKind);
  if (connectState && connectState.last_update_time) node.title = "since " + formatTime(connectState.last_update_time) + " UTC";
  return node;
}

function sourceConnected(t) {
  return !!t && !!t.source_connect_state && t.source_connect_state.status === "CONNECTED";
}

// The list again when this console's terminal connects or goes away, until the tunnel's
// Source column agrees: the relay records the new state a moment after the socket opens.
const FOLLOW_DELAYS_MS = [0, 250, 500, 1000, 1000, 1000, 1000];

async function followSourceState(tunnelId, connected) {
  const seq = ++state.followSeq;
  for (const delay of FOLLOW_DELAYS_MS) {
    // (a microtask first: a log out that closes the terminal has forgotten the token by then)
    await new Promise((resolve) => (delay ? setTimeout(resolve, delay) : queueMicrotask(resolve)));
    if (seq !== state.followSeq || !state.token) return;
    try { await loadTunnels(); } catch { return; }
    const shown = state.tunnels.find((t) => t.tunnel_id === tunnelId);
    if (!shown || sourceConnected(shown) === connected) return;
  }
}

function renderTunnels() {
  const rows = state.tunnels.map((t) => {
    const open = t.status === "OPEN";
    const check = el("input", { type: "checkbox", "aria-label": `Select ${t.tunnel_id}` });
    check.checked = state.selected.has(t.tunnel_id);
    check.addEventListener("change", () => {
      if (check.checked) state.selected.add(t.tunnel_id); else state.selected.delete(t.tunnel_id);
      renderBatchBar();
    });
    const actions = el("div", { class: "row-actions" });
    if (open) {
      actions.append(
        el("button", { type: "button", class: "btn btn-small btn-primary", onclick: () => openTerminalFor(t) }, "Terminal"),
        el("button", { type: "button", class: "btn btn-small", onclick: () => rotate(t) }, "Rotate"),
        el("button", { type: "button", class: "btn btn-small", onclick: () => closeTunnel(t) }, "Close"),
      );
    } else {
      actions.append(el("button", { type: "button", class: "btn btn-small btn-danger", onclick: () => deleteTunnel(t) }, "Delete"));
    }
    actions.append(el("button", { type: "button", class: "btn btn-small btn-ghost", title: "This tunnel's audit trail",
      onclick: () => showAudit({ tunnel_id: t.tunnel_id }) }, "History"));
    const actionsCell = el("td", { class: "actions-cell" }, actions);
    const statusCell = el("td", { class: "col-status" }, badge(t.status, open ? "open" : "closed"));
    const reason = open || !t.close_reason ? ""
      : (t.close_reason in CLOSE_REASON_LABELS ? CLOSE_REASON_LABELS[t.close_reason] : t.close_reason);
    if (reason) statusCell.append(el("span", { class: "muted small reason" }, reason));
    const ends = open ? ["ends", formatTime(t.expires_at)] : ["closed", formatTime(t.closed_time)];
    return el("tr", { dataset: { tunnelId: t.tunnel_id }, class: open ? "" : "row-closed" },
      el("td", { class: "check" }, check),
      el("td", { class: "col-tunnel", title: t.tunnel_id }, el("div", { class: "mono tunnel-id" }, t.tunnel_id),
        t.description ? el("div", { class: "muted small description", title: t.description }, t.description) : null),
      el("td", { class: "mono col-device" }, t.device_id),
      statusCell,
      el("td", { class: "col-source" }, endCell(t, t.source_connect_state, "idle")),
      el("td", { class: "col-device-state" }, endCell(t, t.device_connect_state, "warn")),
      el("td", { class: "col-notify" }, notifyCell(t)),
      el("td", { class: "col-times small" },
        el("div", { class: "nowrap", title: "created (UTC)" }, formatTime(t.create_time)),
        el("div", { class: "nowrap muted", title: `${ends[0]} (UTC)` }, `${ends[0]} ${ends[1]}`)),
      actionsCell,
    );
  });
  $("tunnel-rows").replaceChildren(...rows);
  $("empty").hidden = rows.length > 0;
  const first = state.tunnels.length ? (state.markers.length - 1) * PAGE_SIZE + 1 : 0;
  const last = first ? first + state.tunnels.length - 1 : 0;
  $("page-info").textContent = state.count ? `${first}–${last} of ${state.count}` : "";
  $("prev-page").disabled = state.markers.length <= 1;
  $("next-page").disabled = !state.nextMarker || last >= state.count;
  renderBatchBar();
}

function renderBatchBar() {
  const n = state.selected.size;
  $("batchbar").hidden = n === 0;
  $("batch-count").textContent = `${n} selected`;
  const all = $("select-all");
  all.checked = n > 0 && n === state.tunnels.length;
  all.indeterminate = n > 0 && n < state.tunnels.length;
}

// -- actions --------------------------------------------------------------------------------

function showSecrets(title, tunnel, answer) {
  $("secrets-title").textContent = title;
  const items = [["Tunnel id", answer.tunnel_id]];
  if (answer.tunnel_access_token) items.push(["Source token (tunnel_access_token)", answer.tunnel_access_token]);
  if (answer.tunnel_uri) items.push(["Source address (tunnel_uri)", answer.tunnel_uri]);
  if (answer.device_access_token) items.push(["Device token", answer.device_access_token]);
  if (answer.device_tunnel_uri) items.push(["Device address", answer.device_tunnel_uri]);
  items.push(["Expires in", `${answer.expires_in} s`]);
  $("secrets-list").replaceChildren(...items.flatMap(([k, v]) => [el("dt", {}, k), el("dd", { class: "mono" }, v)]));
  const button = $("secrets-terminal");
  button.hidden = !answer.tunnel_access_token;
  button.onclick = () => {
    openTerminal(tunnel, answer.tunnel_access_token, "Using the source token from this page.");
  };
  $("secrets").hidden = false;
}

async function createTunnel(event) {
  event.preventDefault();
  const body = { device_id: $("create-device").value.trim() };
  const description = $("create-description").value.trim();
  if (description) body.description = description;
  const expires = $("create-expires").value.trim();
  if (expires) body.expires_in = Number(expires);
  if ($("create-record").checked) body.record_session = true;
  $("create-error").textContent = "";
  $("create-submit").disabled = true;
  try {
    const answer = await api("POST", "", body);
    $("create-form").reset();
    $("create-form").hidden = true;
    showSecrets("Tunnel created", { tunnel_id: answer.tunnel_id, device_id: body.device_id }, answer);
    toast(`Tunnel created for ${body.device_id}.`);
    state.markers = [null];
    await loadTunnels();
  } catch (error) {
    $("create-error").textContent = `${error.message}${error.code ? ` (${error.code})` : ""}`;
  } finally {
    $("create-submit").disabled = false;
  }
}

async function closeTunnel(t) {
  if (!await confirmDialog("Close tunnel", `Close the tunnel of ${t.device_id}? Both ends are disconnected; a closed tunnel cannot be reopened.`, { ok: "Close tunnel", danger: true })) return;
  try {
    await api("PUT", `/${t.tunnel_id}`);
    toast(`Tunnel of ${t.device_id} closed.`);
  } catch (error) { reportError(error, "Close"); }
  await loadTunnels().catch(() => {});
}

async function deleteTunnel(t) {
  if (!await confirmDialog("Delete tunnel", `Delete the closed tunnel ${t.tunnel_id}?`, { ok: "Delete", danger: true })) return;
  try {
    await api("DELETE", `/${t.tunnel_id}`);
    toast("Tunnel deleted.");
  } catch (error) { reportError(error, "Delete"); }
  await loadTunnels().catch(() => {});
}

async function rotate(t) {
  const side = el("select", { id: "rotate-side", "aria-label": "Which token" },
    el("option", { value: "source" }, "Source token (applications, this console)"),
    el("option", { value: "device" }, "Device token (sent to the device by MQTT)"),
    el("option", { value: "all" }, "Both"));
  const ok = await confirmDialog("Rotate tokens",
    `New tokens for the tunnel of ${t.device_id}. The old token stops working at once and the connections opened with it are closed.`,
    { ok: "Rotate", extra: el("label", {}, "Token ", side) });
  if (!ok) return;
  try {
    const answer = await api("POST", `/${t.tunnel_id}/rotate-token`, { side: side.value });
    showSecrets("Tokens rotated", t, answer);
    toast(`Tokens of ${t.device_id} rotated.`);
  } catch (error) { reportError(error, "Rotate"); }
  await loadTunnels().catch(() => {});
}

async function batch(kind) {
  const ids = [...state.selected];
  if (!ids.length) return;
  const verb = kind === "close" ? "Close" : "Delete";
  if (!await confirmDialog(`${verb} ${ids.length} tunnel(s)`, kind === "close"
    ? "Close the selected tunnels? Their connections are ended."
    : "Delete the selected tunnels? Only closed tunnels can be deleted.", { ok: verb, danger: true })) return;
  try {
    const answer = await api("POST", `/batch-${kind}`, { tunnel_ids: ids });
    const failed = answer.results.filter((r) => r.result !== "SUCCESS");
    if (failed.length) {
      toast(`${verb}: ${answer.success_count} done, ${answer.failure_count} failed: ` +
        failed.slice(0, 3).map((r) => `${r.tunnel_id.slice(0, 8)}… ${r.error_msg}`).join("; "), "error");
    } else {
      toast(`${verb}: ${answer.success_count} done.`);
    }
    state.selected.clear();
  } catch (error) { reportError(error, verb); }
  await loadTunnels().catch(() => {});
}

// -- the terminal ---------------------------------------------------------------------------

const CLOSE_MEANINGS = {
  1000: "the tunnel is over (closed or expired)",
  1001: "the relay is shutting down",
  1006: "the connection was lost",
  4000: "replaced by a newer connection",
  4001: "the source token was rotated",
  4008: "no answer to heartbeats",
  4400: "a message was not a valid envelope",
  4403: "a message this end may not send",
  4409: "a request id was reused",
};

class TunnelTerminal {
  constructor(tunnel, token) {
    this.tunnel = tunnel;
    this.token = token;
    this.screen = new Screen($("screen"));
    this.loggedIn = false;
    this.sshLogin = new SshLogin();
    this.deviceThere = false;
    this.socket = null;
    this.lastReason = "";   // the latest disconnect, shown again when the connection closes
  }

  url() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    return `${scheme}//${location.host}/v5/iot/tunnels/${encodeURIComponent(this.tunnel.tunnel_id)}/source-connect`;
  }

  open() {
    this.screen.clear();
    this.setState("connecting", "warn");
    this.message("Connecting to the relay…");
    // The token travels as a subprotocol (browsers cannot set headers), never in the URL.
    const socket = new WebSocket(this.url(), ["iot-tunnel.v1", "access-token." + this.token]);
    this.socket = socket;
    socket.addEventListener("open", () => {
      if (this.socket !== socket) return;
      followSourceState(this.tunnel.tunnel_id, true);
      this.setState("waiting for device", "warn");
      this.message("Connected to the relay; waiting for the device to connect its end of the tunnel…");
    });
    socket.addEventListener("message", (event) => this.onMessage(event.data));
    socket.addEventListener("close", (event) => {
      if (this.socket !== socket) return;
      followSourceState(this.tunnel.tunnel_id, false);
      this.loggedIn = false;
      this.deviceThere = false;
      this.updateControls();
      this.setState("closed", "closed");
      const meaning = CLOSE_MEANINGS[event.code] || "";
      const reason = event.reason ? `: ${event.reason}` : "";
      const before = this.lastReason ? `${this.lastReason}. ` : "";
      this.message(`${before}The tunnel connection closed (code ${event.code}${meaning ? `, ${meaning}` : ""}${reason}).`, "error");
    });
  }

  send(operation, data, prefix) {
    if (!this.socket || this.socket.readyState !== WebSocket.OPEN) return null;
    const id = newRequestId(prefix);
    this.socket.send(JSON.stringify({ operation_type: operation, tunnel_service_type: "ssh", request_id: id, data }));
    return id;
  }

  onMessage(raw) {
    let msg;
    try { msg = JSON.parse(raw); } catch { return; }
    const data = msg.data;
    switch (msg.operation_type) {
      case "connect_tunnel":
        this.deviceThere = true;
        this.lastReason = "";
        this.setState("device connected", "ok");
        this.message("The device is connected: log in with an SSH user of the device.");
        this.updateControls();
        if (!$("ssh-user").value) $("ssh-user").focus(); else $("ssh-password").focus();
        break;
      case "connect_response": {
        const answer = this.sshLogin.answered(data);
        this.loggedIn = answer.accepted;
        if (answer.accepted) {
          this.setState("logged in", "ok");
          this.message(answer.text, "ok");
          $("ssh-password").value = "";
          $("screen").focus();
        } else {
          this.message(answer.text, "error");
        }
        this.updateControls();
        break;
      }
      case "command_response":
        if (typeof data === "string") {
          this.sshLogin.output();
          this.screen.write(data);
        }
        break;
      case "disconnect": {
        const refused = this.sshLogin.refused(msg.request_id, data);
        if (refused) {
          this.loggedIn = false;
          if (this.deviceThere) this.setState("device connected", "ok");
          this.lastReason = refused;
          this.message(refused, "error");
          this.updateControls();
          break;
        }
        const code = data && data.status_code;
        const text = (data && data.status_msg) || "no reason given";
        this.loggedIn = false;
        if (code === "499" || code === "404") {
          this.deviceThere = false;
          this.setState("waiting for device", "warn");
        } else if (this.deviceThere) {
          this.setState("device connected", "ok");
        }
        this.lastReason = `Disconnected (${code || "?"}): ${text}`;
        this.message(this.lastReason, "error");
        this.updateControls();
        break;
      }
      default:
        break;   // pong and anything newer
    }
  }

  login(username, password) {
    this.message(`Logging in as ${username}…`);
    this.send("connect", { username, password }, "connect");
  }

  type(text) {
    if (!this.loggedIn) return;
    for (let i = 0; i < text.length; i += PASTE_CHUNK) {
      this.send("command", text.slice(i, i + PASTE_CHUNK), "cmd");
    }
  }

  endSession() {
    if (this.loggedIn) this.send("disconnect", { status_code: "200", status_msg: "ended from the console" }, "bye");
    this.loggedIn = false;
    this.updateControls();
    if (this.deviceThere) this.setState("device connected", "ok");
    this.message("SSH session ended; log in again to open a new one.");
  }

  close() {
    if (this.loggedIn) this.send("disconnect", { status_code: "200", status_msg: "console closed" }, "bye");
    const socket = this.socket;
    this.socket = null;
    if (socket) {
      socket.close(1000, "console closed");
      followSourceState(this.tunnel.tunnel_id, false);
    }
  }

  setState(text, kind) {
    const node = $("term-state");
    node.textContent = text;
    node.className = `badge badge-${kind}`;
  }

  message(text, kind = "info") {
    const node = $("term-message");
    node.textContent = text;
    node.className = `term-message term-${kind}`;
  }

  updateControls() {
    $("ssh-connect").disabled = !this.deviceThere;
    $("term-logout").disabled = !this.loggedIn;
    $("ssh-form").hidden = this.loggedIn;
    $("screen").classList.toggle("live", this.loggedIn);
  }
}

function openTerminal(tunnel, token, note) {
  closeTerminal();
  const term = new TunnelTerminal(tunnel, token);
  state.terminal = term;
  $("term-title").textContent = `— ${tunnel.device_id} · ${tunnel.tunnel_id}`;
  $("term-note").textContent = note;
  $("terminal-view").hidden = false;
  term.updateControls();
  term.open();
  $("terminal-view").scrollIntoView({ block: "start" });
}

async function openTerminalFor(t) {
  // The relay keeps only a hash of the source token: the console needs a fresh one.
  const connected = t.source_connect_state && t.source_connect_state.status === "CONNECTED";
  const ok = await confirmDialog("Open terminal",
    "The relay does not keep source tokens, so the console rotates this tunnel's source token to open its " +
    "terminal. The previous source token stops working" +
    (connected ? ", and the application connected with it now is disconnected (401, close code 4001)." : "."),
    { ok: "Rotate and open" });
  if (!ok) return;
  try {
    const answer = await api("POST", `/${t.tunnel_id}/rotate-token`, { side: "source" });
    openTerminal(t, answer.tunnel_access_token, "The source token was rotated to open this terminal: the previous one no longer works.");
    loadTunnels().catch(() => {});
  } catch (error) { reportError(error, "Open terminal"); }
}

function closeTerminal() {
  if (state.terminal) state.terminal.close();
  state.terminal = null;
  $("terminal-view").hidden = true;
  $("ssh-password").value = "";
}

function onTerminalKey(event) {
  const term = state.terminal;
  if (!term || !term.loggedIn) return;
  if (event.ctrlKey && (event.key === "c" || event.key === "C") && String(window.getSelection())) return;   // copy
  const text = keyToText(event);
  if (text === null) return;
  event.preventDefault();
  term.type(text);
}

function onTerminalPaste(event) {
  const term = state.terminal;
  if (!term || !term.loggedIn) return;
  event.preventDefault();
  const text = (event.clipboardData && event.clipboardData.getData("text")) || "";
  term.type(text.replace(/\r?\n/g, "\r"));
}

// -- wiring ---------------------------------------------------------------------------------

function wire() {
  $("login-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const project = $("login-project").value.trim();
    const token = $("login-token").value.trim();
    $("login-error").textContent = "";
    $("login-submit").disabled = true;
    try {
      await login(project, token);
      $("login-token").value = "";
    } catch (error) {
      state.project = null;
      state.token = null;
      $("login-error").textContent = error.status === 401 || error.status === 403
        ? `The relay refused this token for project ${project}: ${error.message}`
        : `Cannot log in: ${error.message}`;
    } finally {
      $("login-submit").disabled = false;
    }
  });
  $("logout").addEventListener("click", () => logout(""));

  $("search-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const search = $("search").value.trim();
    if (search && !UUID_RE.test(search) && !DEVICE_RE.test(search)) {
      toast("Search for a device id (letters, digits, _ and -) or a tunnel id (a UUID).", "error");
      return;
    }
    state.filter = { search, status: $("status-filter").value };
    state.markers = [null];
    state.selected.clear();
    loadTunnels().catch((error) => reportError(error, "Search"));
  });
  $("status-filter").addEventListener("change", () => $("search-form").requestSubmit());
  $("search").addEventListener("input", () => {   // emptied (or cleared with its x): show everything again
    if (!$("search").value && state.filter.search) $("search-form").requestSubmit();
  });
  $("refresh").addEventListener("click", () => loadTunnels().then(() => toast("Refreshed.")).catch((error) => reportError(error, "Refresh")));
  $("prev-page").addEventListener("click", () => {
    if (state.markers.length > 1) state.markers.pop();
    loadTunnels().catch((error) => reportError(error, "Previous page"));
  });
  $("next-page").addEventListener("click", () => {
    if (!state.nextMarker) return;
    state.markers.push(state.nextMarker);
    loadTunnels().catch((error) => reportError(error, "Next page"));
  });
  $("select-all").addEventListener("change", (event) => {
    if (event.target.checked) state.tunnels.forEach((t) => state.selected.add(t.tunnel_id));
    else state.selected.clear();
    renderTunnels();
  });
  $("batch-close").addEventListener("click", () => batch("close"));
  $("batch-delete").addEventListener("click", () => batch("delete"));

  $("new-tunnel").addEventListener("click", () => {
    $("create-form").hidden = false;
    $("create-device").focus();
  });
  $("create-cancel").addEventListener("click", () => {
    $("create-form").reset();
    $("create-form").hidden = true;
  });
  $("create-form").addEventListener("submit", createTunnel);
  $("secrets-dismiss").addEventListener("click", () => {
    $("secrets").hidden = true;
    $("secrets-list").replaceChildren();
  });

  $("ssh-form").addEventListener("submit", (event) => {
    event.preventDefault();
    if (state.terminal) state.terminal.login($("ssh-user").value.trim(), $("ssh-password").value);
  });
  $("term-logout").addEventListener("click", () => state.terminal && state.terminal.endSession());
  $("term-close").addEventListener("click", closeTerminal);
  $("tab-tunnels").addEventListener("click", () => {
    showView("tunnels");
    loadTunnels().catch((error) => reportError(error, "Tunnels"));
  });
  $("tab-audit").addEventListener("click", () => showAudit(state.audit.filter));
  state.audit = new AuditView({ $, el, badge, formatTime, toast, reportError, fetchApi: projectApi });
  $("screen").addEventListener("keydown", onTerminalKey);
  $("screen").addEventListener("paste", onTerminalPaste);
}

async function start() {
  wire();
  const saved = loadSession();
  if (saved) {
    try {
      await login(saved.project, saved.token);
      return;
    } catch {
      logout("Log in again: the saved API token was not accepted.");
      return;
    }
  }
  $("login-view").hidden = false;
  $("login-token").focus();
}

start();
