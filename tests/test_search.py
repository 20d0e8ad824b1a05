"""Search: the query language (pure), the FTS5 index beside the history (its own file, written by a process
of its own), and the in-memory store agreeing with it. Real SQLite files and processes; waits are bounded
(``wait_indexed``, a pidfd), never sleeps."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zmqchat import protocol as p
from zmqchat.server import search as q
from zmqchat.server.sequencer import Sequencer
from zmqchat.server.store import Batch, MemoryStore, SqliteStore, StoreError


def body(room: str, seq: int, text: str, sender: str = "alice") -> bytes:
    return p.room_message_body(room, seq, 1.0, sender, text, f"s.{seq}", False)


def fill(store, texts: list[str], room: str = "#a", sender: str = "alice") -> Sequencer:
    seq = Sequencer(store, 100)
    for text in texts:
        seq.append(room, 1.0, "k", lambda n, text=text: body(room, n, text, sender))
    seq.submit()
    return seq


def texts_of(found) -> list[str]:
    return [text for _room, _seq, _ts, _sender, text in found]


# --------------------------------------------------------------------------------------------------
# the query language


def test_words_phrases_and_prefixes():
    assert q.parse('Deploy "it FAILED" fix*') == [q.Term(("deploy",)), q.Term(("it", "failed")),
                                                  q.Term(("fix",), prefix=True)]
    assert q.fts_expression(q.parse('a "b c" d*')) == '"a" AND "b c" AND "d"*'


def test_every_quote_a_user_types_stays_inside_a_string():
    expression = q.fts_expression([q.Term(('x"y',))])  # folded words have no quotes, but the escape holds
    assert expression == '"x""y"'


@pytest.mark.parametrize(("query", "why"), [("", "give a word"), ("*** ...", "give a word"),
                                             ("x" * 201, "longer than"), ("a " * 17, "at most 16")])
def test_a_query_with_nothing_to_search_is_refused(query, why):
    with pytest.raises(q.QueryError, match=why):
        q.parse(query)


def test_marks_are_code_point_offsets_of_whole_words():
    terms = q.parse("café rocket*")
    text = "🚀 Cafe, rockets; not a cafeteria"
    assert [text[a:b] for a, b in q.marks(terms, text)] == ["Cafe", "rockets"]
    assert q.marks(q.parse('"new york"'), "new  York and new jersey") == [[0, 9]]


# --------------------------------------------------------------------------------------------------
# the index


def test_the_index_finds_newest_first_and_narrows_by_sender_and_room(tmp_path):
    store = SqliteStore(tmp_path / "h.sqlite3", 100)
    seq = fill(store, ["deploy failed", "lunch", "deploy again"])
    seq.append("#dev-ops", 1.0, "k", lambda n: body("#dev-ops", n, "deploy from ops", "bob"))
    seq.submit()
    assert store.wait_indexed(10)
    terms = q.parse("deploy")
    assert texts_of(store.search(terms, "", "", 10)) == ["deploy from ops", "deploy again", "deploy failed"]
    assert texts_of(store.search(terms, "bob", "", 10)) == ["deploy from ops"]
    assert texts_of(store.search(terms, "", "#a", 10)) == ["deploy again", "deploy failed"]
    assert texts_of(store.search(terms, "", "#dev", 10)) == []  # "#dev" is not "#dev-ops"
    assert texts_of(store.search(terms, "", "", 1)) == ["deploy from ops"]
    store.close()
    assert (tmp_path / "h.search.sqlite3").exists()


def test_the_index_survives_a_restart_and_catches_up_with_what_it_missed(tmp_path):
    path = tmp_path / "h.sqlite3"
    store = SqliteStore(path, 100)
    fill(store, ["first words"])
    assert store.wait_indexed(10)
    store.close()
    index = tmp_path / "h.search.sqlite3"
    db = sqlite3.connect(index)  # as if the process died before indexing its last batch
    db.execute("DELETE FROM words")
    db.execute("DELETE FROM entries")
    db.commit()
    db.close()
    again = SqliteStore(path, 100)
    Sequencer(again, 100)  # opens it
    assert again.wait_indexed(10)
    assert texts_of(again.search(q.parse("words"), "", "", 10)) == ["first words"]
    again.close()


def test_a_history_from_before_the_index_is_indexed_at_start(tmp_path):
    path = tmp_path / "h.sqlite3"
    store = SqliteStore(path, 100)
    fill(store, [f"old message {n}" for n in range(5)])
    store.close()
    for suffix in ("", "-wal", "-shm"):
        (tmp_path / f"h.search.sqlite3{suffix}").unlink(missing_ok=True)
    again = SqliteStore(path, 100)
    Sequencer(again, 100)
    assert again.wait_indexed(10)
    assert texts_of(again.search(q.parse("old"), "", "", 10)) == [f"old message {n}" for n in range(4, -1, -1)]
    again.close()


def test_a_damaged_index_file_is_built_again(tmp_path):
    path = tmp_path / "h.sqlite3"
    store = SqliteStore(path, 100)
    fill(store, ["kept in history"])
    store.close()
    (tmp_path / "h.search.sqlite3").write_bytes(b"this is not a database" * 100)
    for suffix in ("-wal", "-shm"):
        (tmp_path / f"h.search.sqlite3{suffix}").unlink(missing_ok=True)
    again = SqliteStore(path, 100)
    Sequencer(again, 100)
    assert again.wait_indexed(10)
    assert texts_of(again.search(q.parse("history"), "", "", 10)) == ["kept in history"]
    again.close()


def test_the_index_is_trimmed_with_the_history(tmp_path):
    store = SqliteStore(tmp_path / "h.sqlite3", retention=10)
    fill(store, [f"note {n}" for n in range(1, 201)])
    assert store.wait_indexed(10)
    found = store.search(q.parse("note"), "", "", 100)
    assert [seq for _room, seq, *_ in found] == list(range(200, 190, -1))
    store.close()


def test_an_index_of_another_history_is_rebuilt(tmp_path):
    path = tmp_path / "h.sqlite3"
    store = SqliteStore(path, 100)
    fill(store, ["from the first history"])
    assert store.wait_indexed(10)
    store.close()
    for suffix in ("", "-wal", "-shm"):
        (tmp_path / f"h.sqlite3{suffix}").unlink(missing_ok=True)  # a new history, the old index left behind
    again = SqliteStore(path, 100)
    fill(again, ["from the second"])
    assert again.wait_indexed(10)
    assert texts_of(again.search(q.parse("from"), "", "", 10)) == ["from the second"]
    again.close()


# --------------------------------------------------------------------------------------------------
# the in-memory store agrees with the index

WORDS = ["deploy", "Déploy", "failed", "straße", "strasse", "İstanbul", "istanbul", "x²", "日本", "a_b", "café",
         "cafe", "rocket", "rockets", "new", "york"]


@settings(max_examples=60, deadline=None)
@given(texts=st.lists(st.lists(st.sampled_from(WORDS), min_size=1, max_size=6).map(" ".join), min_size=1,
                      max_size=12),
       query=st.lists(st.sampled_from([*WORDS, "rock*", '"new york"', "caf*"]), min_size=1, max_size=3))
def test_memory_search_finds_what_the_index_finds(tmp_path_factory, texts, query):
    try:
        terms = q.parse(" ".join(query))
    except q.QueryError:
        return
    memory = MemoryStore(100)
    memory.submit(Batch(1, [("#a", n, 1.0, "k", body("#a", n, text)) for n, text in enumerate(texts, 1)]))
    disk = SqliteStore(tmp_path_factory.mktemp("s") / "h.sqlite3", 100)
    fill(disk, texts)
    assert disk.wait_indexed(10)
    assert texts_of(memory.search(terms, "", "", 100)) == texts_of(disk.search(terms, "", "", 100))
    disk.close()


def test_a_rebuilt_index_keeps_results_newest_first_across_rooms(tmp_path):
    path = tmp_path / "h.sqlite3"
    store = SqliteStore(path, 100)
    seq = Sequencer(store, 100)
    for n, room in enumerate(["#a", "#b", "#a", "#c", "#b"]):  # interleaved rooms, in time order
        seq.append(room, 100.0 + n, "k", lambda s, room=room, n=n: p.room_message_body(
            room, s, 100.0 + n, "alice", f"word {n}", f"x.{n}", False))
    seq.submit()
    store.close()
    for suffix in ("", "-wal", "-shm"):
        (tmp_path / f"h.search.sqlite3{suffix}").unlink(missing_ok=True)
    again = SqliteStore(path, 100)
    Sequencer(again, 100)
    assert again.wait_indexed(10)
    assert texts_of(again.search(q.parse("word"), "", "", 10)) == [f"word {n}" for n in range(4, -1, -1)]
    again.close()


def test_without_the_index_search_says_it_is_off(tmp_path):
    from zmqchat.server.core import ServerConfig, ServerCore

    store = SqliteStore(tmp_path / "h.sqlite3", 100, search=False)
    core = ServerCore(ServerConfig(), store, clock=lambda: 1.0)
    core.receive(p.encode_client(p.Hello(session="s1", name="alice", rooms=["#general"])))
    core.flush()
    core.receive(p.encode_client(p.SearchRequest(session="s1", query="x", rid="q1")))
    (_topic, reply), = [p.decode_server(f) for f in core.flush()]
    assert (reply.code, reply.message) == (p.ERR_UNAVAILABLE, "search is off on this server")
    store.close()
    assert not (tmp_path / "h.search.sqlite3").exists()


# --------------------------------------------------------------------------------------------------
# the index's process


def ended_within(pid: int, timeout: float) -> bool:
    """Whether process ``pid`` (any, not only a child) has ended within ``timeout`` seconds."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        return bool(select.select([fd], [], [], timeout)[0])
    finally:
        os.close(fd)


def test_the_index_process_ends_with_the_store(tmp_path):
    store = SqliteStore(tmp_path / "h.sqlite3", 100)
    fill(store, ["hello there"])
    assert store.wait_indexed(10)
    pid = store._indexer.pid
    assert pid is not None and pid != os.getpid()
    store.close()
    assert ended_within(pid, 10)


@contextlib.contextmanager
def store_in_a_process(path, retention: int, indexed: bool):
    """A process that opens a store on ``path`` (``indexed``: and waits for its index), as a server does;
    yields it and its index process's pid. Killed, if still alive, at the end."""
    code = ("import sys\n"
            "from zmqchat.server.sequencer import Sequencer\n"
            "from zmqchat.server.store import SqliteStore\n"
            f"store = SqliteStore(sys.argv[1], {retention})\n"
            "Sequencer(store, 100)\n"
            + ("assert store.wait_indexed(10)\n" if indexed else "") +
            "print(store._indexer.pid, flush=True)\n"
            "sys.stdin.read()\n")
    server = subprocess.Popen([sys.executable, "-c", code, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert select.select([server.stdout], [], [], 30)[0], "the store did not open"
        yield server, int(server.stdout.readline())
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(10)
        server.stdin.close()
        server.stdout.close()


def test_the_index_process_ends_when_the_server_is_killed(tmp_path):
    with store_in_a_process(tmp_path / "h.sqlite3", 100, indexed=True) as (server, pid):
        server.kill()  # -9: no close(), no goodbye; the index process sees its input end
        server.wait(10)
        assert ended_within(pid, 10)


def test_a_dead_index_process_fails_search_but_not_the_history(tmp_path):
    path = tmp_path / "h.sqlite3"
    store = SqliteStore(path, 100)
    seq = fill(store, ["written before"])
    assert store.wait_indexed(10)
    pid = store._indexer.pid
    os.kill(pid, signal.SIGKILL)
    assert ended_within(pid, 10)
    with pytest.raises(StoreError, match="index process ended"):
        store.search(q.parse("written"), "", "", 10)
    seq.append("#a", 1.0, "k", lambda n: body("#a", n, "written after"))
    seq.submit()  # the history goes on without its index
    assert [s for s, _body in store.read("#a", 0, 0, 10, False)] == [1, 2]
    store.close()
    again = SqliteStore(path, 100)  # a restart indexes what the dead process missed
    Sequencer(again, 100)
    assert again.wait_indexed(10)
    assert texts_of(again.search(q.parse("written"), "", "", 10)) == ["written after", "written before"]
    again.close()


def test_a_dead_index_process_is_started_again_and_catches_up(tmp_path):
    now = [100.0]
    store = SqliteStore(tmp_path / "h.sqlite3", 100, clock=lambda: now[0])
    seq = fill(store, ["one"])
    assert store.wait_indexed(10)
    pid = store._indexer.pid
    os.kill(pid, signal.SIGKILL)
    assert ended_within(pid, 10)
    for text in ("two", "three"):  # the first batch it misses starts the clock
        seq.append("#a", 1.0, "k", lambda n, text=text: body("#a", n, f"number {text}"))
        seq.submit()
        now[0] += 20
    with pytest.raises(StoreError):
        store.search(q.parse("number"), "", "", 10)
    seq.append("#a", 1.0, "k", lambda n: body("#a", n, "number four"))
    seq.submit()  # 40 s after: a new process, which indexes what the history holds
    assert store._indexer.pid != pid
    assert store.wait_indexed(10)
    assert texts_of(store.search(q.parse("number"), "", "", 10)) == ["number four", "number three", "number two"]
    store.close()


def test_the_index_process_works_past_select_s_1024_descriptors(tmp_path):
    pipes = [os.pipe() for _ in range(600)]  # a busy server's descriptors: the index's pipes come after
    try:
        store = SqliteStore(tmp_path / "h.sqlite3", 100)
        fill(store, ["past the limit"])
        assert store._indexer._rfd > 1024
        assert store.wait_indexed(10)
        assert texts_of(store.search(q.parse("limit"), "", "", 10)) == ["past the limit"]
        store.close()
    finally:
        for r, w in pipes:
            os.close(r)
            os.close(w)


def test_news_the_pipe_could_not_take_goes_out_on_the_store_s_tick(tmp_path):
    store = SqliteStore(tmp_path / "h.sqlite3", 1000)
    seq = fill(store, ["first"])
    assert store.wait_indexed(10)
    indexer = store._indexer
    os.kill(indexer.pid, signal.SIGSTOP)  # it reads nothing: the pipe fills
    try:
        n = 0
        while not (indexer._out and indexer._tops) and n < 100_000:
            n += 1
            seq.append(f"#r{n % 500}", 1.0, "k", lambda s, n=n: body(f"#r{n % 500}", s, f"number {n}"))
            seq.submit()
        assert indexer._out and indexer._tops  # written in part, and news merged behind it
    finally:
        os.kill(indexer.pid, signal.SIGCONT)
    deadline = time.monotonic() + 10
    while (indexer._out or indexer._tops) and time.monotonic() < deadline:
        select.select([], [indexer._wfd], [], 1)  # bounded: wait for the pipe to take more
        store._pump_index()  # what the checkpointer's thread does once a second
    assert not indexer._out and not indexer._tops
    assert store.wait_indexed(30)
    assert texts_of(store.search(q.parse(f'"number {n}"'), "", "", 10)) == [f"number {n}"]
    store.close()


def test_the_checkpointer_ticks_the_index(tmp_path):
    from zmqchat.server.store import _Checkpointer

    sqlite3.connect(tmp_path / "h.sqlite3").close()
    ticked = threading.Event()
    checkpointer = _Checkpointer(tmp_path / "h.sqlite3", lambda: 0.0, ticked.set)
    checkpointer.INTERVAL = 0.05
    checkpointer.start()
    try:
        assert ticked.wait(10)
    finally:
        checkpointer.stop()


def test_an_index_process_waits_for_the_index_file_s_lock(tmp_path):
    import fcntl

    with open(tmp_path / "h.search.sqlite3.lock", "a") as lock:  # as an earlier process still finishing
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        store = SqliteStore(tmp_path / "h.sqlite3", 100)
        fill(store, ["after the lock"])
        assert not store.wait_indexed(0.5)  # waiting for the lock
    assert store.wait_indexed(10)
    assert texts_of(store.search(q.parse("lock"), "", "", 10)) == ["after the lock"]
    store.close()


def test_an_orphaned_index_process_stops_between_transactions(tmp_path):
    path = tmp_path / "h.sqlite3"
    plain = SqliteStore(path, 1_000_000, search=False)
    seq = Sequencer(plain, 100)
    for n in range(60_000):
        seq.append("#a", 1.0, "k", lambda s, n=n: body("#a", s, f"old words {n}"))
        if n % 5000 == 4999:
            seq.submit()
    seq.submit()
    plain.close()
    with store_in_a_process(path, 1_000_000, indexed=False) as (server, pid):
        os.kill(pid, signal.SIGSTOP)  # held before its catch-up of 60,000 rows is done ...
        server.kill()  # ... while the server is killed
        server.wait(10)
        os.kill(pid, signal.SIGCONT)
        assert ended_within(pid, 10)
    indexed = sqlite3.connect(tmp_path / "h.search.sqlite3").execute("SELECT COUNT(*) FROM entries").fetchone()[0]
    assert indexed < 60_000  # it stopped at a transaction's end, without finishing
    again = SqliteStore(path, 1_000_000)  # the next start goes on from there
    Sequencer(again, 100)
    assert again.wait_indexed(60)
    assert len(again.search(q.parse("old"), "", "", 100)) == 100
    again.close()


def test_trims_the_index_missed_are_made_at_its_next_start(tmp_path):
    now = [100.0]
    store = SqliteStore(tmp_path / "h.sqlite3", 10, clock=lambda: now[0])
    seq = fill(store, ["secret password"], room="#quiet")
    assert store.wait_indexed(10)
    os.kill(store._indexer.pid, signal.SIGKILL)
    assert ended_within(store._indexer.pid, 10)
    for n in range(70):  # the history trims "secret" away; the dead index hears none of it
        seq.append("#quiet", 1.0, "k", lambda s, n=n: body("#quiet", s, f"filler {n}"))
        seq.submit()
    now[0] += 60
    seq.append("#other", 1.0, "k", lambda s: body("#other", s, "elsewhere"))
    seq.submit()  # a new index process, told where each room's history begins
    assert store.wait_indexed(10)
    assert store.search(q.parse("secret"), "", "", 10) == []
    assert sqlite3.connect(tmp_path / "h.search.sqlite3").execute(
        "SELECT COUNT(*) FROM words WHERE words MATCH 'secret'").fetchone()[0] == 0  # gone, not only hidden
    store.close()


def test_a_row_that_cannot_be_written_is_skipped_and_the_rest_indexed(tmp_path):
    store = SqliteStore(tmp_path / "h.sqlite3", 100)
    seq = Sequencer(store, 100)
    seq.append("#a", 1.0, "k", lambda s: body("#a", s, "before the bad one"))
    seq.append("#a", 1.0, "k", lambda s: (b'{"room":"#a","seq":%d,"ts":1.0,"sender":"alice","text":"bad \\ud800",'
                                          b'"mid":"s.%d","action":false}' % (s, s)))
    seq.append("#a", 1.0, "k", lambda s: body("#a", s, "after the bad one"))
    seq.submit()
    assert store.wait_indexed(10)
    assert texts_of(store.search(q.parse("bad"), "", "", 10)) == ["after the bad one", "before the bad one"]
    assert not store._indexer.failed
    store.close()


def test_a_search_before_the_index_is_open_finds_nothing_yet(tmp_path):
    import fcntl

    with open(tmp_path / "h.search.sqlite3.lock", "a") as lock:  # the process cannot open the index yet
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        store = SqliteStore(tmp_path / "h.sqlite3", 100)
        fill(store, ["not yet"])
        assert store.search(q.parse("yet"), "", "", 10) == []  # not an error: like an index catching up
    assert store.wait_indexed(10)
    assert texts_of(store.search(q.parse("yet"), "", "", 10)) == ["not yet"]
    store.close()
