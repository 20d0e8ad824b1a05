"""The package's shape: the library never imports the command line, and the pure modules touch no sockets,
files or clocks of their own (issue 11's rule; checked on the source, not by convention)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "zmqchat"
PURE = ["protocol.py", "events.py", "errors.py", "server/core.py", "server/sequencer.py", "server/presence.py",
        "server/ratelimit.py", "server/dedupe.py", "server/search.py", "server/storage.py", "client/session.py",
        "client/commands.py", "client/display.py", "tui/state.py"]


def imported(path: Path) -> set[str]:
    """Every module ``path`` imports. Relative ones are resolved within the package and written without
    the ``zmqchat.`` prefix (``from ..cli.common`` in ``web/app.py`` -> ``cli.common``; ``from . import x``
    in ``server/core.py`` -> ``server.x``); absolute ones as they are."""
    package = list(path.relative_to(PACKAGE).parent.parts)  # [] for zmqchat/x.py, ["web"] for zmqchat/web/x.py
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                names.add(node.module or "")
                continue
            base = package[:len(package) - (node.level - 1)] if node.level > 1 else package
            if node.module:
                names.add(".".join([*base, node.module]))
            else:
                names |= {".".join([*base, alias.name]) for alias in node.names}
    return names


def test_the_library_never_imports_the_command_line():
    outside = [path for path in PACKAGE.rglob("*.py") if path.relative_to(PACKAGE).parts[0] != "cli"]
    assert len(outside) > 10
    offenders = {str(path.relative_to(PACKAGE)): sorted(n for n in imported(path) if n.split(".")[0] == "cli"
                                                        or n.startswith("zmqchat.cli"))
                 for path in outside}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_pure_modules_import_no_zmq_sqlite_socket_or_threads():
    forbidden = ("zmq", "sqlite3", "socket", "threading", "asyncio")
    offenders = {name: sorted(n for n in imported(PACKAGE / name) if n.split(".")[0] in forbidden) for name in PURE}
    assert {k: v for k, v in offenders.items() if v} == {}


CLOCKS = {"time", "monotonic", "perf_counter", "process_time", "time_ns", "monotonic_ns", "now", "utcnow", "today"}


def test_the_pure_modules_read_no_clock_but_an_injected_one():
    """``clock=time.monotonic`` as a default is injection; ``time.monotonic()`` called inside is not."""
    offenders = {}
    for name in PURE:
        tree = ast.parse((PACKAGE / name).read_text())
        calls = [node.lineno for node in ast.walk(tree) if isinstance(node, ast.Call)
                 and isinstance(node.func, ast.Attribute) and node.func.attr in CLOCKS
                 and isinstance(node.func.value, ast.Name) and node.func.value.id in ("time", "datetime", "date")]
        calls += [node.lineno for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                  and node.module in ("time", "datetime") and {a.name for a in node.names} & CLOCKS]
        if calls:
            offenders[name] = calls
    assert offenders == {}


def test_the_server_and_the_client_never_import_each_other():
    def crossing(side: str, other: str) -> dict[str, list[str]]:
        found = {}
        for path in (PACKAGE / side).glob("*.py"):
            names = sorted(n for n in imported(path) if n.split(".")[0] == other or n.startswith(f"zmqchat.{other}"))
            if names:
                found[f"{side}/{path.name}"] = names
        return found

    assert crossing("server", "client") == {} and crossing("client", "server") == {}


def test_the_server_rules_reach_storage_only_through_the_interface():
    rules = ["server/core.py", "server/sequencer.py", "server/presence.py", "server/ratelimit.py",
             "server/dedupe.py", "server/search.py", "server/storage.py"]
    offenders = {name: sorted(n for n in imported(PACKAGE / name) if n in ("server.store", "server.loop"))
                 for name in rules}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_index_process_needs_only_the_standard_library():
    """``server/indexer.py`` runs as a program by its path (``python -I``): no import of zmqchat, or of
    anything installed, would be found there."""
    import sys

    names = imported(PACKAGE / "server" / "indexer.py")
    assert sorted(n for n in names if n.split(".")[0] not in sys.stdlib_module_names) == []
