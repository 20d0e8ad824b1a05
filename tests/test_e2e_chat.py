"""End to end through the real console scripts: chat, rooms, names, leaving, presence, restarts."""

from __future__ import annotations

import signal
import time

from conftest import Proc, script


def test_two_clients_chat_and_own_message_once(chat):
    chat.server()
    alice = chat.client("alice")
    bob = chat.client("bob")
    alice.expect(r"#general -- bob joined")
    alice.send("hi bob")
    bob.expect(r"^\[\d\d:\d\d:\d\d\] #general <alice> hi bob$")
    alice.expect(r"#general <alice> hi bob$")
    bob.send("hello alice")
    alice.expect(r"#general <bob> hello alice$")
    bob.expect(r"#general <bob> hello alice$")
    assert alice.count(r"<alice> hi bob$") == 1
    assert bob.count(r"<bob> hello alice$") == 1


def test_three_clients_everyone_sees_everyone(chat):
    chat.server()
    names = ["alice", "bob", "carol"]
    clients = {name: chat.client(name) for name in names}
    clients["alice"].expect("carol joined")
    for name, proc in clients.items():
        proc.send(f"from {name}")
    for proc in clients.values():
        for name in names:
            proc.expect(f"<{name}> from {name}$")


def test_rooms_are_isolated_including_prefixes(chat):
    chat.server()
    alice = chat.client("alice")  # stays in #general
    bob = chat.client("bob", "--room", "#dev")
    carol = chat.client("carol", "--room", "#devops")
    bob.send("dev only")
    bob.expect("#dev <bob> dev only$")
    carol.send("devops only")
    carol.expect("#devops <carol> devops only$")
    alice.send("general only")
    alice.expect("general only")
    # Every line above was published before any marker below. PUB keeps order per subscriber, so once a
    # client sees its own marker, any leaked line would already have reached it.
    for proc, room in ((alice, "#general"), (bob, "#dev"), (carol, "#devops")):
        proc.send(f"marker {room}")
        proc.expect(f"{room} <.*> marker {room}$")
    assert alice.count("dev only|devops only") == 0
    assert bob.count("devops only|general only") == 0
    assert carol.count("dev only$|general only") == 0 and carol.count("devops only") == 1
    carol.send("/join #dev")
    carol.expect("#dev -- carol joined")
    carol.expect(r"#dev \(history\) <bob> dev only$")  # the backlog of the room just joined
    carol.send("/part #dev")
    carol.expect("you left #dev")
    bob.expect("#dev -- carol left")


def test_join_part_who_rooms_commands(chat):
    chat.server()
    alice = chat.client("alice")
    bob = chat.client("bob")
    bob.send("/join #dev")
    bob.expect("#dev -- bob joined")
    bob.send("/who")
    bob.expect(r"^#dev: bob$")
    bob.expect(r"^#general: alice, bob$")
    alice.send("/rooms")
    alice.expect(r"^#dev \(1\)$")
    alice.expect(r"^#general \(2\)$")
    bob.send("in dev")  # the current room is the one joined last
    bob.expect("#dev <bob> in dev")
    alice.send("/bogus")
    alice.expect("unknown command /bogus")
    alice.send("/help")
    alice.expect("/join #room")


def test_name_collision_is_refused(chat):
    chat.server()
    chat.client("alice")
    second = chat.client("alice", wait_connected=False)
    assert second.wait() == 1
    second.expect("name 'alice' is already taken", stream="err")


def test_invalid_name_is_refused_locally(chat):
    chat.server()
    bad = chat.client("has space", wait_connected=False)
    assert bad.wait() == 1
    bad.expect("^ERROR: invalid name", stream="err")


def _leave_routes():
    return {
        "exit": lambda proc: proc.send("exit"),
        "/quit": lambda proc: proc.send("/quit"),
        "eof": lambda proc: proc.close_stdin(),
        "ctrl-c": lambda proc: proc.signal(signal.SIGINT),
    }


def test_graceful_exit_by_each_route(chat):
    chat.server()
    watcher = chat.client("watcher")
    for route, leave in _leave_routes().items():
        name = "u" + route.strip("/").replace("-", "")
        proc = chat.client(name)
        watcher.expect(f"-- {name} joined")
        leave(proc)
        assert proc.wait() == 0, route
        watcher.expect(f"-- {name} left$")


def test_kill_9_is_noticed_as_timeout(chat):
    chat.server()
    watcher = chat.client("watcher")
    victim = chat.client("victim")
    watcher.expect("victim joined")
    victim.signal(signal.SIGKILL)
    victim.wait()
    watcher.expect(r"-- victim left \(timed out\)$")


def test_server_sigterm_notifies_clients_and_exits_fast(chat):
    server = chat.server()
    alice = chat.client("alice")
    started = time.monotonic()
    server.signal(signal.SIGTERM)
    assert server.wait() == 0
    assert time.monotonic() - started < 2.0
    alice.expect("server shutting down")
    alice.expect("connection lost, retrying")
    server.expect("server stopped", stream="err")


def test_client_started_before_server_connects_when_it_comes_up(chat):
    alice = chat.client("alice", "--connect-timeout", "15", wait_connected=False)
    time.sleep(0.5)  # sleep-ok: the point of the test is that the server starts later
    assert alice.popen.poll() is None
    chat.server()
    alice.expect("^Connected as alice")


def test_no_server_gives_clear_error_and_status_1(chat):
    started = time.monotonic()
    alice = chat.client("alice", "--connect-timeout", "1", wait_connected=False)
    assert alice.wait() == 1
    assert time.monotonic() - started < 5
    alice.expect("^ERROR: no answer from a zmqchat server at tcp://127.0.0.1", stream="err")


def test_pipe_mode_delivers_every_line(chat):
    chat.server()
    reader = chat.client("reader")
    lines = [f"line {i}" for i in range(150)]  # more than the default burst: throttled, still all delivered
    pipe = Proc(script("zmqchat-client") + ["--name", "ci", "--port", str(chat.port)])
    chat.procs.append(pipe)
    pipe.send(*lines)
    pipe.close_stdin()
    assert pipe.wait(30) == 0
    reader.expect("<ci> line 149$")
    got = [line.split("<ci> ", 1)[1] for line in reader.lines["out"] if "<ci> " in line]
    assert got == lines


def test_environment_variables_set_flags(chat):
    chat.server()
    env = {"ZMQCHAT_PORT": str(chat.port), "ZMQCHAT_NAME": "envy", "ZMQCHAT_ROOM": "#env"}
    proc = Proc(script("zmqchat-client"), env=env)
    chat.procs.append(proc)
    proc.expect("^Connected as envy")
    proc.send("from env")
    proc.expect("#env <envy> from env")


def test_client_reconnects_after_server_restart(chat):
    server = chat.server()
    alice = chat.client("alice")
    bob = chat.client("bob")
    server.signal(signal.SIGKILL)
    server.wait()
    alice.expect("connection lost, retrying")
    chat.server()
    alice.expect("^reconnected$")
    bob.expect("^reconnected$")
    alice.send("after restart")
    bob.expect("<alice> after restart$")
    alice.send("/who")
    alice.expect(r"^#general: alice, bob$")


def test_ipc_endpoints(chat, tmp_path):
    ends = ["--in-endpoint", f"ipc://{tmp_path}/in", "--out-endpoint", f"ipc://{tmp_path}/out"]
    chat.server(*ends)
    alice = chat.client("alice", *ends)
    alice.send("over ipc")
    alice.expect("<alice> over ipc$")


def test_pipe_mode_exits_1_when_a_line_is_refused(chat):
    chat.server()
    reader = chat.client("reader")
    started = time.monotonic()
    pipe = Proc(script("zmqchat-client") + ["--name", "ci", "--port", str(chat.port)])
    chat.procs.append(pipe)
    pipe.expect("^Connected as ci")
    pipe.send("fine", "x" * 20000, "/part", "after part")
    pipe.close_stdin()
    assert pipe.wait() == 1
    assert time.monotonic() - started < 5  # the parted room's pending echo is not waited for
    pipe.expect("^ERROR: message too long", stream="err")
    pipe.expect("^ERROR: you are in no room", stream="err")
    pipe.expect(r"^ERROR: 2 input line\(s\) were refused", stream="err")
    reader.expect("<ci> fine$")
