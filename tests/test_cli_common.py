"""The shared CLI helpers: ZMQCHAT_* environment defaults and key names."""

from __future__ import annotations

import argparse

import pytest

from zmqchat.cli.common import apply_env_defaults
from zmqchat.errors import ZmqchatError
from zmqchat.keys import generate


def parser_with_flags() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=4444)
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--ignore", action="append", default=[])
    return parser


def test_environment_sets_defaults_and_the_command_line_wins():
    parser = parser_with_flags()
    apply_env_defaults(parser, {"ZMQCHAT_PORT": "5555", "ZMQCHAT_QUIET": "yes", "ZMQCHAT_IGNORE": "bob, carol"})
    args = parser.parse_args([])
    assert (args.port, args.quiet, args.ignore) == (5555, True, ["bob", "carol"])
    args = parser.parse_args(["--port", "6000", "--ignore", "dave"])
    assert (args.port, args.ignore) == (6000, ["bob", "carol", "dave"])


def test_a_bad_environment_value_is_a_clear_usage_error(capsys):
    parser = parser_with_flags()
    with pytest.raises(SystemExit):
        apply_env_defaults(parser, {"ZMQCHAT_PORT": "lots"})
    assert "ZMQCHAT_PORT='lots' is not a valid port" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["../escaped", "a/b", ".hidden", "a\\b"])
def test_key_names_cannot_be_paths(tmp_path, name):
    with pytest.raises(ZmqchatError, match="invalid key name"):
        generate(name, tmp_path / "keys")
    assert not (tmp_path / "escaped.key").exists()


def test_servers_from_the_command_line_and_the_environment(capsys):
    from zmqchat.cli.common import add_connection_flags, client_kwargs

    parser = argparse.ArgumentParser()
    add_connection_flags(parser)
    args = parser.parse_args(["--servers", "127.0.0.1:4444, 127.0.0.1:5444", "--server-key", "a.key,b.key"])
    kwargs = client_kwargs(args)
    assert kwargs["servers"] == ["127.0.0.1:4444", "127.0.0.1:5444"]
    assert kwargs["server_key"] == ["a.key", "b.key"]  # one per server, in order
    assert "servers" not in client_kwargs(parser.parse_args([]))  # --host/--port: one server, as before
    assert client_kwargs(parser.parse_args(["--server-key", "a,b.key"]))["server_key"] == "a,b.key"  # one file

    parser = argparse.ArgumentParser()
    add_connection_flags(parser)
    apply_env_defaults(parser, {"ZMQCHAT_SERVERS": "[::1]:4444,[::1]:5444"})
    assert parser.parse_args([]).servers == ["[::1]:4444", "[::1]:5444"]
    with pytest.raises(SystemExit):
        parser.parse_args(["--servers", "127.0.0.1"])
    assert "is not HOST:PORT" in capsys.readouterr().err

    parser = argparse.ArgumentParser()
    add_connection_flags(parser)
    with pytest.raises(SystemExit):
        apply_env_defaults(parser, {"ZMQCHAT_SERVERS": "a:1,a:1"})
    assert "ZMQCHAT_SERVERS='a:1,a:1': server a:1 is given twice" in capsys.readouterr().err
