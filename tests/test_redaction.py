"""Secrets in URLs never reach what is printed: the helper itself, then each place that prints a URL."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from extproc.admin import AdminServer
from extproc.cli import main
from extproc.config import ConfigError, ListenAddress, load_config
from extproc.plugins.registry import PluginSet
from extproc.plugins.runner import shared_threads
from extproc.redaction import redact_url
from extproc.reload import Reloader
from tests.e2e.harness import request
from tests.test_admin import Backend


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://user:s3cret@h/1", "redis://user:***@h/1"),
        ("redis://:s3cret@h:6379/0", "redis://***@h:6379/0"),
        # A lone user info may be the password (clients disagree), so all of it goes.
        ("redis://s3cret@h:6379", "redis://***@h:6379"),
        ("redis://h:6379/0", "redis://h:6379/0"),
        ("unix:///run/redis.sock?db=1&password=s3cret", "unix:///run/redis.sock?db=1&password=***"),
        ("rediss://h/0?ssl_password=s3cret&client_name=web", "rediss://h/0?ssl_password=***&client_name=web"),
        ("redis://h/0?token=s3cret", "redis://h/0?token=***"),
        # Malformed URLs are the ones config errors quote.
        ("user:s3cret@h:6379", "user:***@h:6379"),
        ("redis://user:s3cret@[::1/0", "redis://user:***@[::1/0"),
        ("redis://user:s3c/r?e#t@h:6379/0", "redis://user:***@h:6379/0"),
        ("redis://user:s3cret@h:port/0", "redis://user:***@h:port/0"),
        # An '@' after the host makes the split ambiguous: more is masked, not less.
        ("redis://user:s3cret@h/0?client_name=a@b", "redis://user:***@b"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


@pytest.mark.parametrize(
    "url",
    [
        "http://user:s3cret@h:6379/0",  # wrong scheme
        "user:s3cret@h:6379",  # no scheme at all
        "redis://user:s3cret@h:port/0",  # port not a number
        "redis://user:s3cret@h:99999/0",  # port out of range
        "redis://user:s3cret@[::1/0",  # unclosed IPv6 bracket
        "redis://user:s3cret@:6379/0",  # no host
        "redis://user:s3cret@h:0/0",  # port 0
        "unix://user:s3cret@",  # no socket path
    ],
)
def test_config_errors_quote_the_url_without_its_password(tmp_path: Path, url: str) -> None:
    path = tmp_path / "extproc.yaml"
    path.write_text(f"state: {{backend: redis, url: '{url}'}}\nplugins: []\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.key == "state.url"
    assert "s3cret" not in str(caught.value)
    assert "***" in str(caught.value)


def test_a_failed_reload_answers_and_logs_the_url_redacted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "extproc.yaml"
    path.write_text("plugins: []\n")
    threads = shared_threads()
    reloader = Reloader(PluginSet.load(load_config(path), threads), lambda plugins: None, threads)
    admin = AdminServer(ListenAddress("127.0.0.1", 0), Backend(), reload=reloader.reload)
    admin.start()
    try:
        path.write_text("state: {backend: redis, url: 'redis://user:s3cret@h:port/0'}\nplugins: []\n")
        with caplog.at_level(logging.ERROR, logger="extproc.reload"):
            answer = request("POST", f"http://127.0.0.1:{admin.port}/reload")
    finally:
        admin.stop()
    assert answer.status == 422
    assert "redis://user:***@h:port/0" in answer.json()["message"]
    assert "redis://user:***@h:port/0" in caplog.text
    assert "s3cret" not in answer.text + caplog.text


@pytest.mark.parametrize(
    ("url", "stream"),
    [("redis://user:s3cret@127.0.0.1:6379/0", "out"), ("redis://user:s3cret@127.0.0.1:port/0", "err")],
    ids=["ok", "error"],
)
def test_check_prints_the_state_url_redacted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], url: str, stream: str
) -> None:
    path = tmp_path / "extproc.yaml"
    path.write_text(f"state: {{backend: redis, url: '{url}'}}\nplugins: []\n")
    code = main(["check", "--config", str(path)])
    printed = capsys.readouterr()
    assert code == (0 if stream == "out" else 1)
    assert redact_url(url) in (printed.out if stream == "out" else printed.err)
    assert "s3cret" not in printed.out + printed.err
