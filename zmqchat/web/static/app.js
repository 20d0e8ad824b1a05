// The chat page: renders the gateway's events (the zmqchat --json schema) and sends what the user types.
// The rules (what a line means, what a message id is, what to resend) are the gateway's and the client's;
// this module only shows state and keeps its outbox until the gateway has answered each line.

import { CLOSE, Connection } from "./conn.js";
import { isMessage, Store, typed } from "./state.js";
import { clear, clock, el, insertionPoint, markedText, messageRow, nickClass, systemRow } from "./view.js";

const $ = (id) => document.getElementById(id);
const PAGE = 50; // messages per scroll-back page
const NEAR_TOP = 80; // px from the top that loads the next older page
const NEAR_BOTTOM = 60; // px from the bottom that counts as "reading the newest"
const RECLAIMS = 15; // open auth: attempts to take our name back after the gateway forgot us (2 s apart)
const PRESENCE = { join: "joined", part: "left", quit: "left", timeout: "left (timed out)",
                   revoked: "left (key no longer authorized)" };

const store = new Store();
const me = { name: "", auth: "open", maxTextBytes: 16384, serverUp: true, reclaims: 0 };
const asked = new Set(); // answers this tab asked for by a typed command (who, rooms, stats)
let conn = null;

// -- rooms and their logs

function roomLog(room) {
  if (!room.log) {
    room.log = el("div", { class: "room-log", dataset: { room: room.name }, hidden: true },
      el("div", { class: "older" }, ""), el("div", { class: "tail" }));
    $("messages").append(room.log);
  }
  return room.log;
}

function addRoom(name) {
  const room = store.room(name);
  roomLog(room);
  renderRooms();
  return room;
}

function dropRoom(name) {
  const room = store.rooms.get(name);
  if (!room) return;
  room.log?.remove();
  store.rooms.delete(name);
  if (store.current === name) switchTo(store.rooms.keys().next().value || "");
  renderRooms();
  store.save();
}

function switchTo(name) {
  store.current = name;
  for (const room of store.rooms.values()) {
    if (room.log) room.log.hidden = room.name !== name;
  }
  const room = store.rooms.get(name);
  if (room) {
    room.unread = 0;
    room.mentions = 0;
    roomLog(room).hidden = false;
    if (conn?.ready) conn.send({ kind: "who", room: name });
    scrollToBottom();
    requestAnimationFrame(fillScreen);
  }
  document.body.classList.remove("show-rooms");
  renderRooms();
  renderHeader();
  renderMembers();
  renderPending();
  store.save();
}

function renderRooms() {
  const list = $("rooms");
  clear(list);
  for (const room of store.rooms.values()) {
    const badge = room.mentions ? el("span", { class: "badge mention", title: "mentions" }, String(room.mentions))
      : room.unread ? el("span", { class: "badge", title: "unread" }, String(room.unread)) : null;
    const open = el("button", { class: "room-link", type: "button", dataset: { room: room.name } }, room.name, badge);
    open.addEventListener("click", () => switchTo(room.name));
    const leave = el("button", { class: "leave", type: "button", title: `Leave ${room.name}`,
                                 "aria-label": `Leave ${room.name}` }, "\u00d7");
    leave.addEventListener("click", () => command({ kind: "part", room: room.name }));
    list.append(el("li", { class: room.name === store.current ? "current" : "" }, open, leave));
  }
  const total = [...store.rooms.values()].reduce((sum, room) => sum + room.unread, 0);
  document.title = total ? `(${total}) zmqchat` : "zmqchat";
}

function renderHeader() {
  const room = store.rooms.get(store.current);
  $("room-name").textContent = store.current || "no room";
  $("topic").textContent = room?.topic?.text || "";
  $("topic").title = room?.topic?.text ? `set by ${room.topic.by}` : "";
  $("me").textContent = me.name ? `you are ${me.name}` : "";
}

function renderMembers() {
  const list = $("members");
  clear(list);
  const room = store.rooms.get(store.current);
  for (const name of [...(room?.members || [])].sort()) {
    list.append(el("li", { class: `${nickClass(name)}${name === me.name ? " self" : ""}` }, name));
  }
}

// -- messages

function atBottom() {
  const box = $("messages");
  return box.scrollHeight - box.scrollTop - box.clientHeight < NEAR_BOTTOM;
}

function scrollToBottom() {
  const box = $("messages");
  box.scrollTop = box.scrollHeight;
}

function insertMessage(msg) {
  const room = store.rooms.get(msg.room);
  if (!room || room.rows.has(msg.seq)) return false; // seen already: nothing twice
  const log = roomLog(room);
  const row = messageRow(msg);
  const at = insertionPoint(room.seqs, msg.seq);
  const next = at < room.seqs.length ? room.rows.get(room.seqs[at]) : log.querySelector(":scope > .tail");
  room.seqs.splice(at, 0, msg.seq);
  room.rows.set(msg.seq, row);
  log.insertBefore(row, next);
  return true;
}

function onMessage(msg) {
  const room = store.rooms.get(msg.room) || addRoom(msg.room);
  const follow = atBottom();
  const fresh = insertMessage(msg);
  room.saw(msg.seq, conn?.synced);
  settle(msg.id, msg.mid);
  if (fresh && !msg.own && !msg.history) {
    const away = msg.room !== store.current || document.hidden;
    if (away) {
      room.unread += 1;
      if (msg.mention) room.mentions += 1;
      renderRooms();
    }
    if (msg.mention) notify(msg);
  }
  if (follow && msg.room === store.current) scrollToBottom();
  store.save();
}

function onPage(event) {
  const room = store.rooms.get(event.room);
  if (!room) return;
  const box = $("messages");
  const before = box.scrollHeight;
  const top = box.scrollTop;
  for (const msg of event.messages) {
    insertMessage({ ...msg, room: event.room });
    if (room.contig === null || event.before === 0) room.saw(msg.seq, false);
  }
  if (room.loading === event.before || event.before === 0) room.loading = 0;
  if (event.start || (event.messages.length === 0 && event.before <= (room.oldest || 1))) room.start = true;
  roomLog(room).querySelector(":scope > .older").textContent = room.start ? `the start of ${room.name}` : "";
  if (event.room === store.current && room.seqs.length && event.messages.length) {
    box.scrollTop = top + (box.scrollHeight - before); // keep what the reader was looking at in place
  }
  store.save();
  requestAnimationFrame(fillScreen);
}

// Scrolled near the top (or the room does not fill the screen yet): ask for the next older page.
function loadOlder() {
  const room = store.rooms.get(store.current);
  if (!room || room.start || room.loading || !conn?.ready) return;
  room.loading = room.oldest || 0;
  roomLog(room).querySelector(":scope > .older").textContent = "loading older messages\u2026";
  conn.send({ kind: "page", room: room.name, before: room.oldest, limit: PAGE });
}

function fillScreen() {
  const box = $("messages");
  if (box.scrollHeight <= box.clientHeight + NEAR_TOP) loadOlder();
}

function system(text, kind = "sys", roomName = store.current) {
  const room = store.rooms.get(roomName) || store.rooms.get(store.current);
  const follow = atBottom();
  if (!room) {
    $("status").hidden = false;
    $("status").textContent = text;
    return;
  }
  const log = roomLog(room);
  log.insertBefore(systemRow(text, kind), log.querySelector(":scope > .tail"));
  if (follow) scrollToBottom();
}

// -- the outbox

function renderPending() {
  const room = store.rooms.get(store.current);
  if (!room) return;
  const tail = roomLog(room).querySelector(":scope > .tail");
  clear(tail);
  for (const line of store.pending) {
    if (line.room !== room.name || !isMessage(line.text)) continue;
    const { text, action } = typed(line.text);
    const row = messageRow({ sender: me.name, text, action, own: true, ts: 0 }, line.state);
    row.dataset.id = line.id;
    row.append(el("span", { class: "state" }, line.state === "failed" ? `failed: ${line.reason}` : "sending\u2026"));
    if (line.state === "failed") {
      const dismiss = el("button", { class: "dismiss", type: "button", title: "Dismiss" }, "\u00d7");
      dismiss.addEventListener("click", () => settle(line.id, ""));
      row.append(dismiss);
    }
    tail.append(row);
  }
  if (atBottom()) scrollToBottom();
}

// A line of ours was answered (its echo came, or the command ran): it leaves the outbox.
function settle(id, mid) {
  const before = store.pending.length;
  store.pending = store.pending.filter((line) => line.id !== id && !(mid && line.mid === mid));
  if (store.pending.length !== before) {
    renderPending();
    store.save();
  }
}

function sendLine(line) {
  if (conn?.ready && conn.send({ kind: "line", id: line.id, room: line.room, text: line.text })) {
    line.serial = conn.serial;
  }
}

function flushOutbox() {
  for (const line of store.pending) {
    if (line.state !== "failed" && line.serial !== conn.serial) sendLine(line);
  }
}

function submit(text) {
  if (!text.trim()) return;
  const line = { id: store.newId(), room: store.current, text, mid: "", state: "sending", reason: "", serial: 0 };
  store.pending.push(line);
  store.save();
  renderPending();
  scrollToBottom();
  sendLine(line);
  if (!conn?.ready && !isMessage(text)) system("not connected: the command runs when the connection is back");
}

function command(cmd) {
  if (!conn?.ready) {
    system("not connected right now; try again in a moment", "error");
    return;
  }
  conn.send({ ...cmd, id: store.newId() });
}

// -- events from the gateway

const handlers = {
  welcome(event) {
    me.name = event.name;
    me.maxTextBytes = event.max_text_bytes;
    if (store.epoch && event.epoch && event.epoch !== store.epoch) resetRooms();
    if (event.epoch) store.epoch = event.epoch;
    if (Number.isInteger(event.term)) store.term = event.term;
    for (const name of [...store.rooms.keys()]) if (!event.rooms.includes(name)) dropRoom(name);
    for (const name of event.rooms) addRoom(name);
    for (const [name, topic] of Object.entries(event.topics || {})) store.room(name).topic = topic;
    setServer(event.connected);
    switchTo(event.room || event.rooms[0] || "");
    if (event.motd && !store.motdShown) {
      store.motdShown = true;
      system(event.motd);
    }
  },
  synced(event) {
    if (event.epoch) store.epoch = event.epoch;
    if (Number.isInteger(event.term)) store.term = event.term;
    for (const [name, last] of Object.entries(event.rooms || {})) {
      const room = store.rooms.get(name);
      if (room && (room.contig === null || room.contig < last) && room.newest >= last) room.contig = last;
    }
    flushOutbox();
    if (store.current) conn.send({ kind: "who", room: store.current });
    me.reclaims = 0;
    store.save();
    requestAnimationFrame(fillScreen);
  },
  reset() {
    resetRooms();
    system("the server's history was reset; earlier messages are gone", "notice");
  },
  message: onMessage,
  page: onPage,
  sending(event) {
    const line = store.pending.find((l) => l.id === event.id);
    if (line) {
      line.mid = event.mid;
      store.save();
    }
  },
  sent(event) {
    settle(event.id, event.mid);
  },
  failed(event) {
    const line = store.pending.find((l) => l.id === event.id || (event.mid && l.mid === event.mid));
    if (line && isMessage(line.text)) {
      line.state = "failed";
      line.reason = event.message;
      renderPending();
      store.save();
    } else {
      settle(event.id, "");
      system(`ERROR: ${event.message}`, "error");
    }
  },
  reply(event) {
    settle(event.id, "");
    system(event.text);
    if (event.room && event.room !== store.current && store.rooms.has(event.room)) switchTo(event.room);
  },
  help(event) {
    settle(event.id, "");
    system(event.text, "help");
  },
  done(event) {
    const ours = store.pending.some((l) => l.id === event.id) || event.id?.startsWith(`p${store.tabId}.`);
    settle(event.id, "");
    if (event.quit) {
      logout();
      return;
    }
    if (ours && event.room && event.room !== store.current) {
      addRoom(event.room);
      switchTo(event.room);
    }
  },
  joined(event) {
    addRoom(event.room);
  },
  left(event) {
    dropRoom(event.room);
  },
  presence(event) {
    const room = store.rooms.get(event.room);
    if (event.name === me.name && event.event === "join") {
      addRoom(event.room);
      store.room(event.room).members.add(me.name);
    } else if (room) {
      if (event.event === "join") room.members.add(event.name);
      else room.members.delete(event.name);
      system(`${event.name} ${PRESENCE[event.event] || event.event}`, "presence", event.room);
    }
    if (event.room === store.current) renderMembers();
  },
  who(event) {
    for (const [name, members] of Object.entries(event.rooms)) {
      const room = store.rooms.get(name);
      if (room) room.members = new Set(members);
    }
    renderMembers();
    if (event.asked || asked.delete("who")) {
      for (const [name, members] of Object.entries(event.rooms)) system(`${name}: ${members.join(", ") || "(nobody)"}`);
    }
  },
  rooms(event) {
    if (!event.asked) return;
    system(Object.entries(event.rooms).map(([name, count]) => `${name} (${count})`).join("\n") || "no rooms");
  },
  stats(event) {
    if (!event.asked) return;
    system(Object.entries(event.stats).map(([key, value]) => `${key}=${value}`).join(" "));
  },
  topic(event) {
    const room = store.rooms.get(event.room);
    if (room) room.topic = event.text ? { text: event.text, by: event.by, ts: event.ts } : null;
    system(event.text ? `topic: ${event.text} (set by ${event.by})` : `topic cleared by ${event.by}`, "notice",
      event.room);
    renderHeader();
  },
  search: showResults,
  notice(event) {
    system(event.text, "notice");
  },
  error(event) {
    system(`ERROR: ${event.message}`, "error");
  },
  connected(event) {
    setServer(true);
    if (event.reconnected) system("reconnected to the chat server", "notice");
  },
  connection_lost(event) {
    setServer(false);
    if (event.switching_to) system(`connection lost, switching to ${event.switching_to}\u2026`, "notice");
  },
  shutdown(event) {
    system(`server: ${event.message}`, "notice");
  },
  pong() {},
};

function resetRooms() {
  for (const room of store.rooms.values()) {
    room.forget();
    if (room.log) {
      for (const row of [...room.log.children]) if (!row.classList.contains("older") && !row.classList.contains("tail")) row.remove();
    }
  }
}

function onEvent(event) {
  const handler = handlers[event.type];
  if (handler) handler(event); // types we do not know are ignored, as the --json schema asks
}

// -- connection state

function setServer(up) {
  me.serverUp = up;
  showStatus();
}

let linkState = "connecting";

function showStatus() {
  const status = $("status");
  let text = "";
  if (linkState === "down") text = "reconnecting\u2026";
  else if (linkState === "connecting") text = "connecting\u2026";
  else if (!me.serverUp) text = "the chat server is unreachable; retrying\u2026";
  status.textContent = text;
  status.hidden = !text;
  document.body.classList.toggle("offline", Boolean(text));
}

function onState(state, detail) {
  if (state === "open") return;
  linkState = state === "synced" ? "up" : state;
  showStatus();
  if (state === "ended") ended(detail);
}

async function ended(detail) {
  if (detail.code === CLOSE.loggedOut && me.auth === "open" && me.name && me.reclaims < RECLAIMS
      && !store.loggedOut) {
    // The gateway no longer knows our login (it restarted, or our session lapsed): take the name again.
    me.reclaims += 1;
    linkState = "down";
    showStatus();
    const answer = await login(me.name, "");
    if (answer.ok) {
      startConnection();
      return;
    }
    if (answer.status === 409 || answer.status >= 500 || answer.status === 0) {
      setTimeout(() => ended(detail), 2000);
      return;
    }
  }
  showLogin(detail.reason || "please log in again");
}

function startConnection() {
  conn?.stop();
  conn = new Connection({ resume: () => store.resume(), onEvent, onState });
  $("login").hidden = true;
  $("app").hidden = false;
  conn.start();
}

// -- logging in

async function login(name, password) {
  const body = { name, resume: store.resume() };
  if (me.auth === "users") body.password = password;
  try {
    const response = await fetch("/api/login", { method: "POST", headers: { "Content-Type": "application/json" },
                                                 body: JSON.stringify(body), credentials: "same-origin" });
    const answer = await response.json();
    return { ok: response.ok, status: response.status, error: answer.error || "" };
  } catch {
    return { ok: false, status: 0, error: "the gateway does not answer" };
  }
}

function showLogin(message = "") {
  conn?.stop();
  $("app").hidden = true;
  $("login").hidden = false;
  $("login-password-row").hidden = me.auth !== "users";
  $("login-password").required = me.auth === "users";
  $("login-hint").textContent = me.auth === "users" ? "Log in with your name and password."
    : "Pick a name to chat under.";
  $("login-error").textContent = message;
  const stored = localStorage.getItem("zmqchat.name");
  if (stored && !$("login-name").value) $("login-name").value = stored;
  $("login-name").focus();
}

async function logout() {
  store.loggedOut = true;
  conn?.stop();
  try {
    await fetch("/api/logout", { method: "POST", credentials: "same-origin" });
  } catch {
    // logged out locally anyway
  }
  store.clear();
  clear($("messages"));
  showLogin("logged out");
}

// -- search

function showResults(event) {
  const list = $("results");
  clear(list);
  $("results-title").textContent = `${event.results.length} result${event.results.length === 1 ? "" : "s"} for `
    + `\u201c${event.query}\u201d${event.more ? " (newest first; more not shown)" : ""}`;
  for (const found of event.results) {
    const item = el("li", { class: "result" },
      el("time", {}, clock(found.ts)), el("span", { class: "room" }, found.room),
      el("span", { class: `nick ${nickClass(found.sender)}` }, found.sender), markedText(found.text, found.marks));
    item.addEventListener("click", () => {
      $("search-results").hidden = true;
      if (store.rooms.has(found.room)) switchTo(found.room);
    });
    list.append(item);
  }
  $("search-results").hidden = false;
}

// -- notifications and the tab title

function notify(msg) {
  if (!("Notification" in window) || Notification.permission !== "granted") return;
  if (!document.hidden && msg.room === store.current) return;
  try {
    new Notification(`${msg.sender} in ${msg.room}`, { body: msg.text, tag: `zmqchat-${msg.room}` });
  } catch {
    // some browsers only allow notifications from a service worker: the unread count still shows
  }
}

// -- wiring

function wire() {
  $("login-form").addEventListener("submit", async (submitEvent) => {
    submitEvent.preventDefault();
    const name = $("login-name").value.trim();
    $("login-submit").disabled = true;
    const answer = await login(name, $("login-password").value);
    $("login-submit").disabled = false;
    $("login-password").value = "";
    if (!answer.ok) {
      $("login-error").textContent = answer.error;
      return;
    }
    store.loggedOut = false;
    me.name = name;
    localStorage.setItem("zmqchat.name", name);
    startConnection();
  });
  const input = $("input");
  $("composer").addEventListener("submit", (submitEvent) => {
    submitEvent.preventDefault();
    const text = input.value;
    input.value = "";
    input.style.height = "";
    submit(text);
  });
  input.addEventListener("keydown", (key) => {
    if (key.key === "Enter" && !key.shiftKey && !key.isComposing) {
      key.preventDefault();
      $("composer").requestSubmit();
    }
  });
  input.addEventListener("input", () => {
    input.style.height = "";
    input.style.height = `${Math.min(input.scrollHeight, 160)}px`;
  });
  $("join-form").addEventListener("submit", (submitEvent) => {
    submitEvent.preventDefault();
    let room = $("join").value.trim();
    if (!room) return;
    if (!room.startsWith("#")) room = `#${room}`;
    $("join").value = "";
    command({ kind: "join", room });
  });
  $("search-form").addEventListener("submit", (submitEvent) => {
    submitEvent.preventDefault();
    const query = $("search").value.trim();
    if (query) command({ kind: "search", query });
  });
  $("close-search").addEventListener("click", () => { $("search-results").hidden = true; });
  $("messages").addEventListener("scroll", () => {
    if ($("messages").scrollTop < NEAR_TOP) loadOlder();
  });
  $("toggle-rooms").addEventListener("click", () => document.body.classList.toggle("show-rooms"));
  $("toggle-members").addEventListener("click", () => {
    const phone = matchMedia("(max-width: 700px)").matches;
    document.body.classList.toggle(phone ? "show-members" : "hide-members");
  });
  $("logout").addEventListener("click", logout);
  $("notify").addEventListener("click", async () => {
    if (!("Notification" in window)) {
      system("this browser has no notifications", "notice");
      return;
    }
    const permission = await Notification.requestPermission();
    system(permission === "granted" ? "you will be notified when someone mentions you"
      : "notifications are blocked for this page", "notice");
    renderNotify();
  });
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden) {
      const room = store.rooms.get(store.current);
      if (room) {
        room.unread = 0;
        room.mentions = 0;
        renderRooms();
      }
      conn?.nudge();
    }
  });
  window.addEventListener("online", () => conn?.nudge());
}

function renderNotify() {
  const on = "Notification" in window && Notification.permission === "granted";
  $("notify").classList.toggle("on", on);
  $("notify").title = on ? "Mentions notify you" : "Notify me when someone mentions me";
}

async function main() {
  wire();
  renderNotify();
  let who = { auth: "open", name: null };
  try {
    who = await (await fetch("/api/me", { credentials: "same-origin" })).json();
  } catch {
    // the gateway is down: the login form says so when used
  }
  me.auth = who.auth;
  if (who.name) {
    me.name = who.name;
    startConnection();
  } else if (who.auth === "open" && localStorage.getItem("zmqchat.name") && store.rooms.size) {
    me.name = localStorage.getItem("zmqchat.name");
    ended({ code: CLOSE.loggedOut, reason: "" }); // this tab was chatting: take the name back and resume
  } else {
    showLogin();
  }
}

main();
