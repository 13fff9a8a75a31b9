"""Storage URLs: the documented postgresql:// form works, and no message shows a password.

The same with a real password-protected server, and the workers of ``--workers 2``, are tried in
test_study_workers.py.
"""

from __future__ import annotations

import socket
import time

import pytest
import yaml

from tests.conftest import tiny_tree
from segtune.cli import main
from segtune.errors import ConfigError
from segtune.study.storage import redact, resolve, scrub

SECRET = "s3cret-Pw"


@pytest.mark.parametrize("url, shown", [
    (f"postgresql://ana:{SECRET}@db:5432/segtune", "postgresql://ana:***@db:5432/segtune"),
    (f"postgresql+psycopg2://ana:{SECRET}@db/segtune?sslmode=require",
     "postgresql+psycopg2://ana:***@db/segtune?sslmode=require"),
    (f"postgresql://ana@db/segtune?sslmode=require&password={SECRET}",
     "postgresql://ana@db/segtune?sslmode=require&password=***"),
    ("postgresql://ana:p%40ss@db/segtune", "postgresql://ana:***@db/segtune"),  # an escaped '@'
    ("postgresql://ana:p@ss@db/segtune", "postgresql://ana:***@db/segtune"),  # unescaped: still hidden whole
    ("postgresql://ana:pa/ss@db/segtune", "postgresql://ana:***@db/segtune"),
    ("postgresql://ana@db:5432/segtune", "postgresql://ana@db:5432/segtune"),  # nothing to hide
    ("sqlite:////tmp/a:b@c/study.db", "sqlite:////tmp/a:b@c/study.db"),  # a path is not user info
])
def test_redact_hides_every_password_and_nothing_else(url, shown):
    assert redact(url) == shown


def test_scrub_hides_a_password_quoted_by_a_driver_as_written_and_decoded():
    url = "postgresql://ana:p%40ss@db/segtune"
    assert scrub("bad password 'p@ss' (p%40ss)", url) == "bad password '***' (***)"
    assert scrub("bad password 'pw'", "postgresql://ana:pw@db/x?options=a@b") == "bad password '***'"


@pytest.mark.parametrize("url, given", [
    ("postgresql://ana@db:5432/segtune", "postgresql+psycopg2://ana@db:5432/segtune"),  # the README's form
    ("postgresql+psycopg://ana@db/segtune", "postgresql+psycopg://ana@db/segtune"),  # a named driver is kept
    ("sqlite:////tmp/study.db", "sqlite:////tmp/study.db"),
])
def test_the_bare_postgresql_scheme_uses_the_installed_driver(url, given):
    assert resolve(url) == given


def test_an_unreadable_url_or_an_unescaped_at_is_refused_without_the_password():
    with pytest.raises(ConfigError, match=r"postgresql://ana:\*\*\*@db:port/x: not a storage URL") as err:
        resolve(f"postgresql://ana:{SECRET}@db:port/x")
    assert SECRET not in str(err.value)
    with pytest.raises(ConfigError, match=r"the password holds '@'; write it as %40, or leave .* PGPASSWORD") as err:
        resolve("postgresql://ana:p@zz9@db/x")
    assert "postgresql://ana:***@db/x" in str(err.value) and "zz9" not in str(err.value)


@pytest.fixture
def closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("command", [
    ["study", "STUDY"], ["study", "status", "STUDY"], ["report", "--study", "x"]])
def test_no_command_prints_the_storage_password(tmp_path, capsys, monkeypatch, closed_port, command):
    # no server listens there: every command fails to open the storage and says so, without the password
    monkeypatch.setattr(time, "sleep", lambda s: None)  # open_storage's retries, not needed here
    study = tmp_path / "study.yaml"
    study.write_text(yaml.safe_dump({"name": "x", "base": tiny_tree(), "method": "grid",
                                     "space": {"optimizer.lr": [0.01]}}))
    url = f"postgresql://ana:{SECRET}@127.0.0.1:{closed_port}/segtune"
    assert main([str(study) if a == "STUDY" else a for a in command] + ["--storage", url]) == 2
    out, err = capsys.readouterr()
    assert f"error: cannot open the study storage postgresql://ana:***@127.0.0.1:{closed_port}/segtune" in err
    assert "Connection refused" in err
    assert SECRET not in out + err
