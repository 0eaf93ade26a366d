// A small terminal for the console: a screen model that a <pre> shows, and the keys a
// terminal sends. Not a full emulator: it handles \r, \n, backspace, tabs, erase-in-line and
// cursor left/right, and strips every other escape sequence (colours, titles, modes).
//
// The device chooses every byte it writes here, in the live terminal and in the player:
// whatever a number in a sequence says, the work and the memory it costs are bounded
// (issue 15): the cursor stays within MAX_COLUMNS (longer lines wrap, as a terminal's do),
// counts are clamped to it, at most MAX_LINES lines are kept, and an incomplete sequence
// waiting for the next message is held up to MAX_PENDING characters (a longer one is dropped,
// and what remains of it skipped as it comes).

export const MAX_LINES = 3000;
export const MAX_COLUMNS = 1000;
export const MAX_PENDING = 4096;

const PRINTABLE_RUN = /[^\x00-\x1f\x7f]+/y;

export class Screen {
  constructor(pre) {
    this.pre = pre;
    this.lines = [""];
    this.row = 0;
    this.col = 0;
    this.pending = "";     // an escape sequence cut in two by the end of a message
    this.skipping = null;  // "string" or "csi": the rest of a sequence too long to hold
    this.scheduled = false;
  }

  clear() {
    this.lines = [""];
    this.row = 0;
    this.col = 0;
    this.pending = "";
    this.skipping = null;
    this.render();
  }

  // Terminal output, as the device sends it (command_response data).
  write(text) {
    let data = this.pending + text;
    this.pending = "";
    let i = this.skip(data, 0);
    while (i < data.length) {
      const ch = data[i];
      if (ch === "\x1b") {
        const used = this.escape(data, i);
        if (used === 0) {            // incomplete: keep it for the next message, if it is not too long
          this.pending = data.slice(i);
          if (this.pending.length > MAX_PENDING) this.drop();
          break;
        }
        i += used;
        continue;
      }
      PRINTABLE_RUN.lastIndex = i;
      if (PRINTABLE_RUN.test(data)) {  // a run of text at once, not character by character
        this.put(data.slice(i, PRINTABLE_RUN.lastIndex));
        i = PRINTABLE_RUN.lastIndex;
        continue;
      }
      i += 1;
      if (ch === "\r") this.col = 0;
      else if (ch === "\n") this.newline();
      else if (ch === "\b") this.col = Math.max(0, this.col - 1);
      else if (ch === "\t") this.put(" ".repeat(8 - (this.col % 8)));
      // bell, other controls: ignored
    }
    this.schedule();
  }

  // The pending sequence is too long to hold: drop it, and skip the rest of it as it comes.
  drop() {
    const kind = this.pending[1];
    this.skipping = kind === "[" ? "csi" : "]P_^X".includes(kind) ? "string" : null;
    this.pending = "";
  }

  // Where the output starts again after the rest of a dropped sequence.
  skip(data, i) {
    if (this.skipping === "csi") {
      while (i < data.length && !(data[i] >= "@" && data[i] <= "~") && data[i] !== "\x1b") i += 1;
      if (i < data.length) { this.skipping = null; return data[i] === "\x1b" ? i : i + 1; }   // ESC: a new sequence
      return i;
    }
    if (this.skipping === "string") {
      for (; i < data.length; i += 1) {
        if (data[i] === "\x07") { this.skipping = null; return i + 1; }
        if (data[i] === "\x1b" && i + 1 < data.length && data[i + 1] === "\\") { this.skipping = null; return i + 2; }
        if (data[i] === "\x1b" && i + 1 === data.length) { this.pending = "\x1b"; return i + 1; }   // maybe ESC \
      }
      return i;
    }
    return i;
  }

  // Line text written at the cursor, overwriting what is there (as a terminal does); a line
  // wraps at MAX_COLUMNS.
  put(text) {
    while (text.length > 0) {
      if (this.col >= MAX_COLUMNS) this.newline();
      const part = text.slice(0, MAX_COLUMNS - this.col);
      text = text.slice(part.length);
      const line = this.lines[this.row];
      const padded = line.length < this.col ? line + " ".repeat(this.col - line.length) : line;
      this.lines[this.row] = padded.slice(0, this.col) + part + padded.slice(this.col + part.length);
      this.col += part.length;
    }
  }

  newline() {
    this.row += 1;
    this.col = 0;
    if (this.row >= this.lines.length) this.lines.push("");
    if (this.lines.length > MAX_LINES) {
      const drop = this.lines.length - MAX_LINES;
      this.lines.splice(0, drop);
      this.row -= drop;
    }
  }

  // The length of the escape sequence at data[i], 0 when it is not complete yet.
  escape(data, i) {
    if (i + 1 >= data.length) return 0;
    const kind = data[i + 1];
    if (kind === "[") {                               // CSI: ESC [ params final
      let j = i + 2;
      while (j < data.length && !(data[j] >= "@" && data[j] <= "~") && data[j] !== "\x1b") j += 1;
      if (j >= data.length) return 0;
      if (data[j] === "\x1b") return j - i;           // cut short by a new sequence, as a terminal does
      this.csi(data.slice(i + 2, j), data[j]);
      return j - i + 1;
    }
    if (kind === "]" || kind === "P" || kind === "_" || kind === "^" || kind === "X") {   // OSC, DCS...: until BEL or ESC \
      for (let j = i + 2; j < data.length; j += 1) {
        if (data[j] === "\x07") return j - i + 1;
        if (data[j] === "\x1b" && j + 1 < data.length && data[j + 1] === "\\") return j - i + 2;
      }
      return 0;
    }
    if (kind === "(" || kind === ")" || kind === "#") return i + 2 < data.length ? 3 : 0;   // charsets
    return 2;                                         // ESC =, ESC >, ESC 7, ...
  }

  csi(params, final) {
    const n = parseInt(params, 10);
    const count = Number.isNaN(n) || n < 1 ? 1 : Math.min(n, MAX_COLUMNS);   // whatever the device asks
    if (final === "K") {                              // erase in line
      const line = this.lines[this.row];
      if (params === "" || params === "0") this.lines[this.row] = line.slice(0, this.col);
      else if (params === "1") this.lines[this.row] = " ".repeat(Math.min(this.col, line.length)) + line.slice(this.col);
      else if (params === "2") this.lines[this.row] = "";
    } else if (final === "C") {
      this.col = Math.min(this.col + count, MAX_COLUMNS - 1);
    } else if (final === "D") {
      this.col = Math.max(0, this.col - count);
    } else if (final === "G") {
      this.col = Math.min(count, MAX_COLUMNS) - 1;
    } else if (final === "P") {                       // delete characters
      const line = this.lines[this.row];
      this.lines[this.row] = line.slice(0, this.col) + line.slice(this.col + count);
    } else if (final === "@") {                       // insert blanks; what is pushed past the edge is lost
      const line = this.lines[this.row];
      if (this.col < line.length) {
        const blanks = Math.min(count, MAX_COLUMNS - this.col);
        this.lines[this.row] = (line.slice(0, this.col) + " ".repeat(blanks) + line.slice(this.col)).slice(0, MAX_COLUMNS);
      }
    } else if (final === "J" && params === "2") {     // clear screen (`clear`): start a fresh page
      this.newline();
    }
    // colours (m), modes (h, l) and everything else (scroll regions, insert/delete lines,
    // repeat: not modelled, so nothing to size): stripped
  }

  schedule() {
    if (this.scheduled) return;
    this.scheduled = true;
    requestAnimationFrame(() => {
      this.scheduled = false;
      this.render();
    });
  }

  // The text as plain nodes (never HTML), with the cursor as a span.
  render() {
    const before = this.lines.slice(0, this.row);
    const line = this.lines[this.row];
    const head = before.join("\n") + (before.length ? "\n" : "") + line.slice(0, this.col);
    const under = this.col < line.length ? line[this.col] : " ";
    const tail = line.slice(this.col + 1) + (this.row + 1 < this.lines.length ? "\n" + this.lines.slice(this.row + 1).join("\n") : "");
    const cursor = document.createElement("span");
    cursor.className = "cursor";
    cursor.textContent = under;
    this.pre.replaceChildren(document.createTextNode(head), cursor, document.createTextNode(tail));
    this.pre.scrollTop = this.pre.scrollHeight;
  }

  text() {
    return this.lines.join("\n");
  }
}

const KEYS = {
  Enter: "\r",           // what a terminal sends; the device's PTY turns it into a newline
  Backspace: "\x7f",
  Tab: "\t",
  Escape: "\x1b",
  ArrowUp: "\x1b[A",
  ArrowDown: "\x1b[B",
  ArrowRight: "\x1b[C",
  ArrowLeft: "\x1b[D",
  Home: "\x1b[H",
  End: "\x1b[F",
  Delete: "\x1b[3~",
  PageUp: "\x1b[5~",
  PageDown: "\x1b[6~",
};

// What a key press sends to the shell, or null for keys the terminal leaves to the browser.
export function keyToText(event) {
  if (event.metaKey) return null;
  if (event.ctrlKey && !event.altKey) {
    if (event.shiftKey && (event.key === "C" || event.key === "V")) return null;   // copy / paste
    const key = event.key.length === 1 ? event.key.toLowerCase() : "";
    if (key >= "a" && key <= "z") return String.fromCharCode(key.charCodeAt(0) - 96);   // Ctrl-C: \x03
    if (key === "[") return "\x1b";
    if (key === "\\") return "\x1c";
    return null;
  }
  if (event.key in KEYS) return KEYS[event.key];
  if (event.key.length === 1) return event.altKey ? "\x1b" + event.key : event.key;
  return null;
}

// What a login's answers mean: the rule of relay/client/session.py (`LoginRule`), mirrored. The
// device agent answers `connect` with status 200 once its shell is open, or with the failure's
// status; Huawei's device SDK answers at once with no `data` (no status), then logs in, and
// tells a failure as a `disconnect` with status 400 and its reason (docs/device.md). So an
// answer without a status is accepted, and until the first output a `disconnect` from the device
// is the login failing. The relay's own disconnects keep their meaning.
const RELAY_DISCONNECTS = new Set(["409", "410", "408", "401", "503", "504"]);
const SDK_CHANNEL_CLOSED_ID = "SSH_timeout_disconnect";   // the SDK's 408 when its shell ended

function loginStatus(data) {
  if (!data || typeof data !== "object") return ["", ""];
  const code = data.status_code;
  const text = data.status_msg;
  return [typeof code === "string" || typeof code === "number" ? String(code) : "",
          typeof text === "string" ? text.split(/\s+/).filter(Boolean).join(" ") : ""];
}

export class SshLogin {
  constructor() {
    this.unconfirmed = false;   // accepted without a status, and no output seen yet
  }

  // A connect_response: { accepted, text } to tell.
  answered(data) {
    const [code, text] = loginStatus(data);
    if (code === "200") {
      this.unconfirmed = false;
      return { accepted: true, text: text || "Logged in." };
    }
    if (!code) {
      this.unconfirmed = true;
      return { accepted: true, text: "The device took the login request (it answers before its SSH login: a refusal would follow as a disconnect)." };
    }
    return { accepted: false, text: `Login failed (${code}): ${text || "no reason given"}` };
  }

  output() {
    this.unconfirmed = false;   // the shell is there: the login worked
  }

  // A disconnect: the text to tell when it is the device refusing the login, else null.
  refused(requestId, data) {
    const [code, text] = loginStatus(data);
    const fromDevice = !RELAY_DISCONNECTS.has(code) || requestId === SDK_CHANNEL_CLOSED_ID;
    if (this.unconfirmed && fromDevice && !["499", "404", "200"].includes(code)) {
      this.unconfirmed = false;
      return `Login failed (${code || "no status"}): ${text || "no reason given"}`;
    }
    return null;
  }
}
