"""The package's shape: the library never imports the command line, and the pure modules touch no sockets,
files or clocks of their own (issue 11's rule; checked on the source, not by convention)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "zmqchat"
PURE = ["protocol.py", "events.py", "errors.py", "core.py", "presence.py", "ratelimit.py", "dedupe.py",
        "session.py", "commands.py", "display.py"]


def imported(path: Path) -> set[str]:
    """Every module ``path`` imports, relative ones written as they appear (``.cli.common`` -> ``cli.common``)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            names.add(base if node.level == 0 else base.lstrip("."))
            if node.level and not base:
                names |= {alias.name for alias in node.names}
    return names


def test_the_library_never_imports_the_command_line():
    offenders = {path.name: sorted(n for n in imported(path) if n == "cli" or n.startswith(("cli.", "zmqchat.cli")))
                 for path in PACKAGE.glob("*.py")}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_pure_modules_import_no_zmq_sqlite_socket_or_threads():
    forbidden = ("zmq", "sqlite3", "socket", "threading", "asyncio")
    offenders = {name: sorted(n for n in imported(PACKAGE / name) if n.split(".")[0] in forbidden) for name in PURE}
    assert {k: v for k, v in offenders.items() if v} == {}
