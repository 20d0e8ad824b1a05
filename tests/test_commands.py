"""Typed lines to results, with a recording stand-in for the client: no sockets, no text parsed back."""

from __future__ import annotations

import pytest

from zmqchat.client.commands import COMMANDS, HELP, QUIT, WORDS, Error, Help, Reply, run_line
from zmqchat.errors import ZmqchatError


class Recorder:
    """The ChatClient interface, remembering every call."""

    def __init__(self, room: str = "#general", fail: bool = False) -> None:
        self.room = room
        self.calls: list[tuple] = []
        self.fail = fail

    def _call(self, *call) -> str:
        if self.fail:
            raise ZmqchatError("message too long")
        self.calls.append(call)
        return "x.1"

    def say(self, text, room=None, action=False):
        return self._call("say", text, action)

    def join(self, room):
        return self._call("join", room)

    def part(self, room=None):
        self._call("part", room)
        self.room = ""
        return room or "#general"

    def who(self, room=""):
        self._call("who", room)

    def rooms(self):
        self._call("rooms")

    def stats(self):
        self._call("stats")

    def history(self, count=20, room=None):
        self._call("history", count)


@pytest.mark.parametrize(("line", "call"), [
    ("hello", ("say", "hello", False)), ("//not a command", ("say", "/not a command", False)),
    ("/me waves", ("say", "waves", True)), ("/join #dev", ("join", "#dev")), ("/JOIN #dev extra", ("join", "#dev")),
    ("/who", ("who", "")), ("/who #dev", ("who", "#dev")), ("/rooms", ("rooms",)), ("/stats", ("stats",)),
    ("/history", ("history", 20)), ("/history 5", ("history", 5)),
])
def test_a_line_becomes_one_call_and_no_text(line, call):
    client = Recorder()
    assert run_line(client, line) is None
    assert client.calls == [call]


@pytest.mark.parametrize(("line", "result"), [
    ("/join", Reply("usage: /join #room")), ("/me", Reply("usage: /me waves")),
    ("/history 0", Reply("usage: /history [N], N from 1 to 1000")),
    ("/history lots", Reply("usage: /history [N], N from 1 to 1000")),
    ("/dance", Reply("unknown command /dance; /help lists them (// sends a line starting with /)")),
    ("/part", Reply("-- you left #general")), ("/help", Help(HELP)), ("/quit", QUIT), ("exit", QUIT), ("   ", None),
])
def test_what_the_user_should_see_is_a_typed_result(line, result):
    assert run_line(Recorder(), line) == result


def test_refusals_are_errors_not_strings_to_parse():
    assert run_line(Recorder(fail=True), "hello") == Error("message too long")
    assert run_line(Recorder(fail=True), "/join #dev") == Error("message too long")
    assert run_line(Recorder(room=""), "hello") == Error("you are in no room: /join #room first")


def test_one_table_gives_help_and_completion():
    assert WORDS == tuple(c.word for c in COMMANDS)
    for command in COMMANDS:
        assert f"  {command.usage}" in HELP and command.help in HELP
    assert HELP.splitlines()[0] == "Commands:" and "//text" in HELP.splitlines()[-1]


def test_the_readme_lists_exactly_the_commands_of_the_table():
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme.split("## Commands (in the client)", 1)[1].split("\n## ", 1)[0]
    listed = {m.group(1) for m in re.finditer(r"^\| `(/[a-z]+)", section, re.MULTILINE)}
    assert listed == set(WORDS)
