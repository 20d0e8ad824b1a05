// DOM helpers. Every piece of text from anyone goes in as a text node (textContent, createTextNode), never
// as HTML: nothing here, nor anywhere in the page, assigns innerHTML or builds markup from strings.

const PALETTE = 12; // nick colours, as the terminal client's 12 (a CRC32 of the name picks one)

let crcTable = null;

function crc32(text) {
  if (crcTable === null) {
    crcTable = new Uint32Array(256);
    for (let n = 0; n < 256; n++) {
      let c = n;
      for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
      crcTable[n] = c >>> 0;
    }
  }
  let crc = 0xffffffff;
  for (const byte of new TextEncoder().encode(text)) crc = crcTable[(crc ^ byte) & 0xff] ^ (crc >>> 8);
  return (crc ^ 0xffffffff) >>> 0;
}

export function nickClass(name) {
  return `nick-${crc32(name) % PALETTE}`;
}

// el("div", {class: "x", title: "y"}, "text", otherNode): attributes are set one by one, children appended
// as nodes; strings become text nodes.
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === false || value === null || value === undefined) continue;
    if (key === "class") node.className = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    node.append(typeof child === "string" ? document.createTextNode(child) : child);
  }
  return node;
}

export function clear(node) {
  while (node.firstChild) node.removeChild(node.firstChild);
}

export function clock(ts) {
  const d = new Date(ts * 1000);
  return d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

function fullTime(ts) {
  return new Date(ts * 1000).toLocaleString();
}

// One chat message as a row: time, nick, text (a /me action reads "* bob waves").
export function messageRow(msg, state = "") {
  const classes = ["msg"];
  if (msg.history) classes.push("history");
  if (msg.own) classes.push("own");
  if (msg.mention) classes.push("mention");
  if (msg.action) classes.push("action");
  if (state) classes.push(state);
  const nick = el("span", { class: `nick ${nickClass(msg.sender)}` }, msg.action ? `* ${msg.sender}` : msg.sender);
  const row = el("div", { class: classes.join(" "), dataset: { seq: msg.seq ?? "", mid: msg.mid ?? "" } },
    el("time", { datetime: new Date((msg.ts || Date.now() / 1000) * 1000).toISOString(),
                 title: msg.ts ? fullTime(msg.ts) : "" }, msg.ts ? clock(msg.ts) : ""),
    nick, el("span", { class: "text" }, msg.text));
  return row;
}

export function systemRow(text, kind = "sys") {
  return el("div", { class: `sys ${kind}` }, text);
}

// A search result's text with its [start, end] marks as <mark> elements (code-point offsets).
export function markedText(text, marks) {
  const points = Array.from(text);
  const span = el("span", { class: "text" });
  let at = 0;
  for (const [start, end] of marks) {
    if (start < at || end > points.length) continue;
    span.append(document.createTextNode(points.slice(at, start).join("")));
    span.append(el("mark", {}, points.slice(start, end).join("")));
    at = end;
  }
  span.append(document.createTextNode(points.slice(at).join("")));
  return span;
}

// The index in ascending ``list`` where ``value`` belongs (the first element >= value).
export function insertionPoint(list, value) {
  let low = 0;
  let high = list.length;
  while (low < high) {
    const mid = (low + high) >> 1;
    if (list[mid] < value) low = mid + 1;
    else high = mid;
  }
  return low;
}
