// The console's audit view (docs/audit.md): the project's audit trail with filters and pages,
// and a player for recorded SSH sessions (asciicast v2) on the console's own terminal screen.
// Plain ES module; data reaches the page as text nodes only.

import { Screen } from "/console/terminal.js";

const PAGE_SIZE = 50;
const IDLE_CAP = 2;          // seconds: longer pauses are shortened when "skip pauses" is ticked

export const EVENT_GROUPS = [
  ["SSH logins", "ssh_login_succeeded,ssh_login_failed"],
  ["Recorded sessions", "session_recorded"],
  ["Connections", "source_connected,source_disconnected,source_evicted,device_connected,device_disconnected,device_evicted"],
  ["Tunnel changes", "tunnel_created,tunnel_closed,tunnel_expired,tunnel_deleted,tokens_rotated,batch_close,batch_delete"],
];

export const EVENT_TYPES = [
  "tunnel_created", "tunnel_closed", "tunnel_expired", "tunnel_deleted", "tokens_rotated", "batch_close",
  "batch_delete", "notify_delivered", "source_connected", "source_disconnected", "source_evicted",
  "device_connected", "device_disconnected", "device_evicted", "ssh_login_succeeded", "ssh_login_failed",
  "forward_opened", "forward_closed", "session_recorded", "audit_events_limited",
];

const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
const DEVICE_RE = /^[A-Za-z0-9_-]{1,128}$/;

// An asciicast v2 file: { header, events: [[time, code, text], ...] }; throws on anything else.
export function parseCast(text) {
  const lines = text.split("\n").filter((line) => line.trim());
  if (!lines.length) throw new Error("the recording is empty");
  const header = JSON.parse(lines[0]);
  if (!header || header.version !== 2) throw new Error("not an asciicast v2 recording");
  const events = lines.slice(1).map((line) => JSON.parse(line))
    .filter((e) => Array.isArray(e) && e.length === 3 && typeof e[0] === "number" && typeof e[2] === "string");
  return { header, events };
}

// A UTC time as typed in the Since/Until boxes -> the API's form (2026-11-24T16:18:07Z); null
// when empty. Takes "2026-11-24 16:18", "2026-11-24 16:18:07" (or a T between, or a Z after)
// and the API's own "20261124T161807Z"; 24-hour clock, whatever the browser's locale.
const UTC_INPUT_RE = /^(\d{4})-?(\d{2})-?(\d{2})(?:[T ]+(\d{2}):?(\d{2})(?::?(\d{2}))?)?Z?$/i;

export function utcParam(value) {
  const text = (value || "").trim();
  if (!text) return null;
  const m = UTC_INPUT_RE.exec(text);
  const [, y, mo, d, h = "00", mi = "00", s = "00"] = m || [];
  const when = m ? new Date(Date.UTC(+y, +mo - 1, +d, +h, +mi, +s)) : null;
  // Date.UTC rolls Feb 30 over to March: a date that comes back different was not one
  if (!when || when.getUTCDate() !== +d || when.getUTCHours() !== +h || when.getUTCMinutes() !== +mi
      || when.getUTCSeconds() !== +s) {
    throw new Error(`${JSON.stringify(text.slice(0, 40))} is not a UTC time like 2026-11-24 16:18:07`);
  }
  return `${y}-${mo}-${d}T${h}:${mi}:${s}Z`;
}

function detailText(detail) {
  if (!detail || typeof detail !== "object") return "";
  return Object.entries(detail)
    .map(([key, value]) => `${key}=${typeof value === "string" ? value : JSON.stringify(value)}`).join(" ");
}

function outcomeKind(event) {
  if (event.outcome === "ok") return "ok";
  if (event.event === "session_recorded") return "warn";   // truncated
  return "error";
}

// -- the player -------------------------------------------------------------------------------

export class CastPlayer {
  constructor($) {
    this.$ = $;
    this.screen = new Screen($("player-screen"));
    this.events = [];
    this.duration = 0;
    this.index = 0;
    this.position = 0;
    this.timer = null;
    this.playing = false;
    this.downloadUrl = null;
  }

  load(sessionId, text, title) {
    this.stop();
    const { header, events } = parseCast(text);
    this.events = events.filter((e) => e[1] === "o" || e[1] === "m");
    this.duration = events.length ? Math.max(...events.map((e) => e[0])) : 0;
    const $ = this.$;
    $("player-title").textContent = `— ${title || header.title || sessionId}`;
    const started = header.timestamp ? new Date(header.timestamp * 1000).toISOString().replace("T", " ").slice(0, 19) + " UTC" : "";
    $("player-note").textContent = `Session ${sessionId}${started ? `, recorded ${started}` : ""}, ` +
      `${this.duration.toFixed(1)} s, terminal ${header.width || "?"}×${header.height || "?"}.`;
    if (this.downloadUrl) URL.revokeObjectURL(this.downloadUrl);
    this.downloadUrl = URL.createObjectURL(new Blob([text], { type: "application/x-asciicast" }));
    $("player-download").href = this.downloadUrl;
    $("player-download").download = `${sessionId}.cast`;
    this.rewind();
  }

  rewind() {
    this.index = 0;
    this.position = 0;
    this.screen.clear();
    this.note("");
    this.update();
  }

  play() {
    if (this.index >= this.events.length) this.rewind();
    this.playing = true;
    this.update();
    this.schedule();
  }

  pause() {
    this.playing = false;
    clearTimeout(this.timer);
    this.timer = null;
    this.update();
  }

  stop() {
    this.pause();
  }

  toggle() {
    if (this.playing) this.pause(); else this.play();
  }

  speed() {
    return Number(this.$("player-speed").value) || 1;
  }

  schedule() {
    clearTimeout(this.timer);
    if (!this.playing) return;
    if (this.index >= this.events.length) {
      this.playing = false;
      this.position = this.duration;
      this.update();
      return;
    }
    let gap = Math.max(0, this.events[this.index][0] - this.position);
    if (this.$("player-skip-idle").checked) gap = Math.min(gap, IDLE_CAP);
    this.timer = setTimeout(() => this.step(), (gap / this.speed()) * 1000);
  }

  apply(event) {
    if (event[1] === "o") this.screen.write(event[2]);
    else this.note(event[2]);
    this.position = event[0];
  }

  step() {
    // everything due at the same moment at once
    const now = this.events[this.index][0];
    while (this.index < this.events.length && this.events[this.index][0] <= now) {
      this.apply(this.events[this.index]);
      this.index += 1;
    }
    this.update();
    this.schedule();
  }

  seek(fraction) {
    const target = Math.max(0, Math.min(1, fraction)) * this.duration;
    clearTimeout(this.timer);
    this.index = 0;
    this.screen.clear();
    this.note("");
    while (this.index < this.events.length && this.events[this.index][0] <= target) {
      this.apply(this.events[this.index]);
      this.index += 1;
    }
    this.position = target;
    this.update();
    this.schedule();
  }

  note(text) {
    this.$("player-message").textContent = text ? `[${text}]` : "";
  }

  update() {
    const $ = this.$;
    const done = this.index >= this.events.length && this.events.length > 0;
    $("player-toggle").textContent = this.playing ? "Pause" : (done ? "Replay" : "Play");
    $("player-state").textContent = this.playing ? "playing" : (done ? "finished" : "paused");
    $("player-state").className = `badge badge-${this.playing ? "ok" : "idle"}`;
    $("player-progress").value = this.duration ? this.position / this.duration : (done ? 1 : 0);
    $("player-time").textContent = `${this.position.toFixed(1)} / ${this.duration.toFixed(1)} s`;
  }

  close() {
    this.stop();
    this.events = [];
    this.screen.clear();
    if (this.downloadUrl) URL.revokeObjectURL(this.downloadUrl);
    this.downloadUrl = null;
  }
}

// -- the view ---------------------------------------------------------------------------------

export class AuditView {
  // deps: { $, el, badge, formatTime, toast, reportError, fetchApi(path, { text }) }
  constructor(deps) {
    this.d = deps;
    this.markers = [null];
    this.next = null;
    this.filter = {};
    this.events = [];
    this.seq = 0;
    this.player = new CastPlayer(deps.$);
    this.fillTypes();
    this.wire();
  }

  fillTypes() {
    const { $, el } = this.d;
    const select = $("audit-type");
    select.replaceChildren(
      el("option", { value: "" }, "All events"),
      el("optgroup", { label: "Groups" }, ...EVENT_GROUPS.map(([label, value]) => el("option", { value }, label))),
      el("optgroup", { label: "One type" }, ...EVENT_TYPES.map((t) => el("option", { value: t }, t))),
    );
  }

  wire() {
    const { $ } = this.d;
    $("audit-form").addEventListener("submit", (event) => {
      event.preventDefault();
      let filter;
      try {
        filter = this.readForm();
      } catch (error) {
        this.d.toast(error.message, "error");
        return;
      }
      this.apply(filter);
    });
    $("audit-type").addEventListener("change", () => $("audit-form").requestSubmit());
    $("audit-clear").addEventListener("click", () => {
      $("audit-form").reset();
      this.apply({});
    });
    $("audit-older").addEventListener("click", () => {
      if (!this.next) return;
      this.markers.push(this.next);
      this.load().catch((e) => this.d.reportError(e, "Older events"));
    });
    $("audit-newer").addEventListener("click", () => {
      if (this.markers.length > 1) this.markers.pop();
      this.load().catch((e) => this.d.reportError(e, "Newer events"));
    });
    $("player-toggle").addEventListener("click", () => this.player.toggle());
    $("player-restart").addEventListener("click", () => { this.player.rewind(); this.player.play(); });
    $("player-close").addEventListener("click", () => this.closePlayer());
    $("player-progress").addEventListener("click", (event) => {
      const box = event.currentTarget.getBoundingClientRect();
      this.player.seek((event.clientX - box.left) / box.width);
    });
    $("player-speed").addEventListener("change", () => this.player.schedule());
  }

  readForm() {
    const { $ } = this.d;
    const time = (id, name) => {
      try {
        return utcParam($(id).value);
      } catch (error) {
        throw new Error(`${name}: ${error.message}`);
      }
    };
    return {
      device_id: $("audit-device").value.trim(),
      tunnel_id: $("audit-tunnel").value.trim(),
      event_type: $("audit-type").value,
      since: time("audit-since", "Since"),
      until: time("audit-until", "Until"),
    };
  }

  // Show the view with these filters (from the form, or a tunnel's History button).
  apply(filter) {
    const { $ } = this.d;
    if (filter.device_id && !DEVICE_RE.test(filter.device_id)) {
      this.d.toast("A device id is letters, digits, _ and -.", "error");
      return Promise.resolve();
    }
    if (filter.tunnel_id && !UUID_RE.test(filter.tunnel_id)) {
      this.d.toast("A tunnel id is a UUID.", "error");
      return Promise.resolve();
    }
    $("audit-device").value = filter.device_id || "";
    $("audit-tunnel").value = filter.tunnel_id || "";
    // the times as applied, in one UTC form (2026-11-24 16:18:07), whatever was typed
    $("audit-since").value = filter.since ? filter.since.replace("T", " ").replace("Z", "") : "";
    $("audit-until").value = filter.until ? filter.until.replace("T", " ").replace("Z", "") : "";
    this.filter = filter;
    this.markers = [null];
    return this.load().catch((e) => this.d.reportError(e, "Audit"));
  }

  query() {
    const params = new URLSearchParams({ limit: String(PAGE_SIZE) });
    for (const key of ["device_id", "tunnel_id", "event_type", "since", "until"]) {
      if (this.filter[key]) params.set(key, this.filter[key]);
    }
    const marker = this.markers[this.markers.length - 1];
    if (marker) params.set("marker", marker);
    return "?" + params.toString();
  }

  async load() {
    const seq = ++this.seq;
    const answer = await this.d.fetchApi("/audit" + this.query());
    if (seq !== this.seq) return;
    this.events = answer.events;
    this.next = answer.marker;
    this.render();
  }

  render() {
    const { $, el, badge, formatTime } = this.d;
    const rows = this.events.map((e) => {
      const actions = el("td", { class: "actions-cell" });
      const session = e.event === "session_recorded" && e.detail && e.detail.session_id;
      if (session) {
        actions.append(el("button", { type: "button", class: "btn btn-small btn-primary", dataset: { session },
          onclick: () => this.openRecording(session, e) }, "Play"));
      }
      return el("tr", { dataset: { eventId: e.event_id, event: e.event } },
        el("td", { class: "nowrap small col-time", title: `${e.timestamp}` }, formatTime(e.time)),
        el("td", { class: "col-event" }, el("span", { class: "mono" }, e.event)),
        el("td", { class: "col-actor" }, e.actor),
        el("td", { class: "mono col-device" }, e.device_id || "—"),
        el("td", { class: "mono col-tunnel", title: e.tunnel_id || "" }, e.tunnel_id || "—"),
        el("td", { class: "col-outcome" }, badge(e.outcome, outcomeKind(e))),
        el("td", { class: "small col-detail" }, detailText(e.detail)),
        actions,
      );
    });
    $("audit-rows").replaceChildren(...rows);
    $("audit-empty").hidden = rows.length > 0;
    const page = this.markers.length;
    $("audit-page-info").textContent = rows.length ? `page ${page}, ${rows.length} event(s), newest first` : "";
    $("audit-newer").disabled = page <= 1;
    $("audit-older").disabled = !this.next;
  }

  async openRecording(sessionId, event) {
    const { $ } = this.d;
    try {
      const text = await this.d.fetchApi(`/recordings/${encodeURIComponent(sessionId)}`, { text: true });
      const who = event && event.detail && event.detail.username ? `${event.detail.username}@${event.device_id}` : "";
      this.player.load(sessionId, text, who);
      $("player-view").hidden = false;
      $("player-view").scrollIntoView({ block: "start" });
      this.player.play();
    } catch (error) {
      this.d.reportError(error, "Recording");
    }
  }

  closePlayer() {
    this.player.close();
    this.d.$("player-view").hidden = true;
  }

  reset() {
    this.closePlayer();
    this.events = [];
    this.filter = {};
    this.markers = [null];
    this.d.$("audit-rows").replaceChildren();
    this.d.$("audit-form").reset();
  }
}
