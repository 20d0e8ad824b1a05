"""Availability against a real server: frame bombs, heartbeats for every room, file descriptors."""

from __future__ import annotations

import zmq
from test_e2e_integrity import _hello, _recv, _stats

from zmqchat import protocol as p


def _raw(zmq_ctx, chat):
    push, sub = zmq_ctx.socket(zmq.PUSH), zmq_ctx.socket(zmq.SUB)
    sub.subscribe(b"")
    sub.connect(f"tcp://127.0.0.1:{chat.port + 1}")
    push.connect(f"tcp://127.0.0.1:{chat.port}")
    return push, sub


def test_a_message_of_many_frames_is_dropped_and_the_server_goes_on(chat, zmq_ctx):
    server = chat.server()
    server.expect("file descriptors: ", stream="err")
    push, sub = _raw(zmq_ctx, chat)
    _hello(push, sub, "s1", "alice")
    push.send_multipart([b""] * 200_000)  # a frame bomb: libzmq queues it whole, the server drops it
    push.send_multipart(p.encode_client(p.Say(session="s1", room="#general", text="still here", mid="s1.1")))
    _recv(sub, lambda t, m: isinstance(m, p.RoomMessage) and m.text == "still here")
    stats = _stats(push, sub, "s1")
    assert stats["rejected"] >= 1 and stats["errors"] == 0
    assert server.count("too many frames", stream="err") == 1
