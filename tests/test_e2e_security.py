"""CURVE: encryption, the allowlist, names bound to keys, and every refusal path, through real processes."""

from __future__ import annotations

import json
import os
import signal
import stat
import time

import pytest
import zmq
from conftest import WAIT, Proc, script

from zmqchat import protocol as p
from zmqchat.keys import load_public, load_secret

FAIL_FAST = ["--connect-timeout", "4"]


@pytest.fixture
def keys(tmp_path):
    """Server key, an allowlist with alice, bob and mallory, and an unlisted stranger."""
    keydir, allowed = tmp_path / "keys", tmp_path / "allowed"
    for name in ("server", "alice", "bob", "mallory", "stranger"):
        proc = Proc(script("zmqchat-keygen") + [name, "--dir", str(keydir)], stdin=False)
        assert proc.wait() == 0
        proc.expect(f"public key: .*{name}.key$")
    allowed.mkdir()
    for name in ("alice", "bob", "mallory"):
        (allowed / f"{name}.key").write_text((keydir / f"{name}.key").read_text())
    return keydir, allowed


def client_keys(keydir, name, server="server"):
    return ["--curve-secret", str(keydir / f"{name}.key_secret"), "--server-key", str(keydir / f"{server}.key")]


def secure_server(chat, keydir, allowed=None, *more):
    extra = ["--curve-secret", str(keydir / "server.key_secret")]
    if allowed is not None:
        extra += ["--authorized-keys", str(allowed)]
    return chat.server(*extra, *more)


def refused(chat, name, *extra, message):
    proc = chat.client(name, *FAIL_FAST, *extra, wait_connected=False)
    assert proc.wait() == 1
    proc.expect(message, stream="err")


def test_keygen_writes_a_private_secret_and_refuses_to_overwrite(keys, tmp_path):
    keydir, _ = keys
    mode = stat.S_IMODE(os.stat(keydir / "alice.key_secret").st_mode)
    assert mode == 0o600
    assert load_public(keydir / "alice.key") == load_secret(keydir / "alice.key_secret")[0]
    again = Proc(script("zmqchat-keygen") + ["alice", "--dir", str(keydir)], stdin=False)
    assert again.wait() == 1
    again.expect("already exists", stream="err")


def test_authorized_clients_chat_under_their_bound_names(chat, keys):
    keydir, allowed = keys
    server = secure_server(chat, keydir, allowed)
    server.expect("CURVE on, 3 authorized keys", stream="err")
    alice = chat.client("alice", *client_keys(keydir, "alice"))
    bob = chat.client("bob", *client_keys(keydir, "bob"))
    alice.send("secret plans")
    bob.expect("<alice> secret plans$")
    bob.send("/who")
    bob.expect("^#general: alice, bob$")


def test_encryption_only_mode_warns_and_accepts_any_key(chat, keys):
    keydir, _ = keys
    server = secure_server(chat, keydir)
    server.expect("any client key may connect", stream="err")
    stranger = chat.client("stranger", *client_keys(keydir, "stranger"))
    stranger.send("hello")
    stranger.expect("<stranger> hello$")


def test_plaintext_client_against_curve_server(chat, keys):
    keydir, allowed = keys
    secure_server(chat, keydir, allowed)
    refused(chat, "alice", message="^ERROR: the handshake with the server failed: it requires CURVE")


def test_client_without_own_key(chat, keys):
    keydir, allowed = keys
    secure_server(chat, keydir, allowed)
    refused(chat, "alice", "--server-key", str(keydir / "server.key"),
            message="^ERROR: CURVE needs both --curve-secret")


def test_unknown_key_is_refused(chat, keys):
    keydir, allowed = keys
    server = secure_server(chat, keydir, allowed)
    refused(chat, "stranger", *client_keys(keydir, "stranger"), message="^ERROR: the server refused our key")
    server.expect("refused a client \\(key not authorized\\)", stream="err")
    alice = chat.client("alice", *client_keys(keydir, "alice"))  # everyone else carries on
    alice.send("/stats")
    alice.expect(r"auth_failures=[1-9]")


def test_wrong_server_key(chat, keys):
    keydir, allowed = keys
    secure_server(chat, keydir, allowed)
    refused(chat, "alice", *client_keys(keydir, "alice", server="bob"), message="^ERROR: .*--server-key")


def test_curve_client_against_plaintext_server(chat, keys):
    keydir, _ = keys
    chat.server()
    refused(chat, "alice", *client_keys(keydir, "alice"), message="^ERROR: .*(not using CURVE|--server-key)")


def test_name_must_match_the_key(chat, keys):
    keydir, allowed = keys
    secure_server(chat, keydir, allowed)
    refused(chat, "bob", *client_keys(keydir, "alice"), message="your key is bound to the name 'alice'")


def _raw_peer(ctx, chat, keydir, name):
    """PUSH + SUB with ``name``'s key, speaking the protocol by hand."""
    public, secret = load_secret(keydir / f"{name}.key_secret")
    server_key = load_public(keydir / "server.key")
    push, sub = ctx.socket(zmq.PUSH), ctx.socket(zmq.SUB)
    for sock in (push, sub):
        sock.curve_secretkey, sock.curve_publickey, sock.curve_serverkey = secret, public, server_key
    sub.subscribe(b"")
    sub.connect(f"tcp://127.0.0.1:{chat.port + 1}")
    push.connect(f"tcp://127.0.0.1:{chat.port}")
    return push, sub


def _wait_for(sub, predicate, timeout=WAIT):
    poller = zmq.Poller()
    poller.register(sub, zmq.POLLIN)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if poller.poll(100):
            topic, msg = p.decode_server(sub.recv_multipart())
            for one in msg.messages if isinstance(msg, p.RoomMessages) else [msg]:
                if predicate(topic, one):
                    return one
    pytest.fail("expected message never came")


def test_impersonation_through_raw_sockets_fails(chat, keys, zmq_ctx):
    keydir, allowed = keys
    secure_server(chat, keydir, allowed)
    alice = chat.client("alice", *client_keys(keydir, "alice"), "--json")
    push, sub = _raw_peer(zmq_ctx, chat, keydir, "mallory")
    # 1. mallory's key asks for alice's name: refused, on mallory's own session topic
    hello = p.Hello(session="m1", name="alice", rooms=["#general"])
    err = None
    while err is None:  # resend until our subscription is in place (slow joiner), bounded by _wait_for
        push.send_multipart(p.encode_client(hello))
        try:
            err = _wait_for(sub, lambda t, m: isinstance(m, p.ErrorReply), timeout=0.5)
        except pytest.fail.Exception:
            continue
    assert err.code == p.ERR_NOT_AUTHORIZED and "bound to the name 'mallory'" in err.message
    # 2. mallory learns alice's session id from the broadcast and speaks in it: dropped
    alice.send("hello from the real alice")
    real = _wait_for(sub, lambda t, m: isinstance(m, p.RoomMessage) and m.sender == "alice")
    session = real.mid.rsplit(".", 1)[0]
    forged = p.Say(session=session, room="#general", text="forged by mallory", mid=f"{session}.999")
    push.send_multipart(p.encode_client(forged))
    # 3. mallory as herself still works, and proves the forged line was processed before this one
    push.send_multipart(p.encode_client(p.Hello(session="m2", name="mallory", rooms=["#general"])))
    _wait_for(sub, lambda t, m: isinstance(m, p.Welcome) and m.name == "mallory")
    push.send_multipart(p.encode_client(p.Say(session="m2", room="#general", text="just mallory", mid="m2.1")))
    alice.expect("just mallory")
    texts = [json.loads(line).get("text") for line in alice.lines["out"]]
    assert "forged by mallory" not in texts
    assert [json.loads(line).get("sender") for line in alice.lines["out"] if "just mallory" in line] == ["mallory"]


def test_sighup_reload_removes_access_for_new_connections(chat, keys):
    keydir, allowed = keys
    server = secure_server(chat, keydir, allowed)
    bob = chat.client("bob", *client_keys(keydir, "bob"))
    bob.send("/quit")
    assert bob.wait() == 0
    (allowed / "bob.key").unlink()
    server.signal(signal.SIGHUP)
    server.expect("reloaded authorized keys: 2", stream="err")
    refused(chat, "bob", *client_keys(keydir, "bob"), message="^ERROR: the server refused our key")
    chat.client("alice", *client_keys(keydir, "alice"))


def test_a_key_removed_by_sighup_cannot_speak_on_its_open_connection(chat, keys, zmq_ctx):
    keydir, allowed = keys
    server = secure_server(chat, keydir, allowed)
    watcher = chat.client("alice", *client_keys(keydir, "alice"), "--json")
    push, sub = _raw_peer(zmq_ctx, chat, keydir, "mallory")
    welcome = None
    while welcome is None:  # mallory joins as herself; resend until the subscription is in place
        push.send_multipart(p.encode_client(p.Hello(session="m1", name="mallory", rooms=["#general"])))
        try:
            welcome = _wait_for(sub, lambda t, m: isinstance(m, p.Welcome), timeout=0.5)
        except pytest.fail.Exception:
            continue
    watcher.expect('"name": "mallory", "event": "join"')
    (allowed / "mallory.key").unlink()
    server.signal(signal.SIGHUP)
    server.expect("reloaded authorized keys: 2", stream="err")
    watcher.expect('"name": "mallory", "event": "revoked"')  # her session ended
    # the same, still-open connection now claims a free name and speaks: dropped, counted
    push.send_multipart(p.encode_client(p.Hello(session="m2", name="eve", rooms=["#general"])))
    push.send_multipart(p.encode_client(p.Say(session="m2", room="#general", text="I am eve", mid="m2.1")))
    failures = 0
    deadline = time.monotonic() + WAIT
    while failures < 2 and time.monotonic() < deadline:  # mallory's frames travel on another connection
        start = len(watcher.lines["out"])
        watcher.send("/stats")
        failures = json.loads(watcher.expect('"type": "stats"', start=start))["stats"]["auth_failures"]
    assert failures >= 2
    assert watcher.count("I am eve") == 0 and watcher.count('"name": "eve"') == 0


def test_a_gateway_key_speaks_for_any_name_and_other_keys_still_cannot(chat, keys, tmp_path):
    keydir, allowed = keys
    proc = Proc(script("zmqchat-keygen") + ["web", "--gateway", "--dir", str(keydir)], stdin=False)
    assert proc.wait() == 0
    (allowed / "web.key").write_text((keydir / "web.key").read_text())
    secure_server(chat, keydir, allowed)
    carol = chat.client("carol", *client_keys(keydir, "web"), "--json")  # the gateway's key, a user's name
    dave = chat.client("dave", *client_keys(keydir, "web"), "--json")
    carol.send("hello from the browser")
    dave.expect('"sender": "carol", "text": "hello from the browser"')
    refused(chat, "carol2", *client_keys(keydir, "mallory"), message="bound to the name 'mallory'")
