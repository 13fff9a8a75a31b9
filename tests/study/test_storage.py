"""The storage: URLs (the documented postgresql:// form works, no message shows a password), a
damaged or emptied study.db (one clear error), and optuna-dashboard reading it as it is.

The same with a real password-protected server, and the workers of ``--workers 2``, are tried in
test_workers.py.
"""

from __future__ import annotations

import socket
import time

import pytest
import yaml

from tests.conftest import tiny_tree, write_study
from segtune.cli import main
from segtune.errors import ConfigError
from segtune.study import run_study
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


@pytest.mark.slow
def test_optuna_dashboard_opens_the_study_storage_as_it_is(tmp_path):
    # optuna-dashboard's own app reads the SQLite file: the study, its trials and their attributes
    import io
    import json
    from wsgiref.util import setup_testing_defaults

    dashboard = pytest.importorskip("optuna_dashboard", reason="pip install optuna-dashboard (in .[test])")
    run_study(write_study(tmp_path), study_dir=tmp_path / "out")
    app = dashboard.wsgi(f"sqlite:///{tmp_path / 'out' / 'study.db'}")

    def get(path: str) -> dict:
        environ, status = {"PATH_INFO": path, "REQUEST_METHOD": "GET", "wsgi.input": io.BytesIO()}, []
        setup_testing_defaults(environ)
        body = b"".join(app(environ, lambda s, headers, exc_info=None: status.append(s)))
        assert status[0].startswith("200"), (path, status, body[:300])
        return json.loads(body)

    studies = get("/api/studies")["study_summaries"]
    assert [s["study_name"] for s in studies] == ["tiny"]
    trials = get(f"/api/studies/{studies[0]['study_id']}")["trials"]
    assert sorted(t["state"] for t in trials) == ["Complete", "Complete"]
    attrs = {a["key"] for a in trials[0]["user_attrs"]}
    assert {"params", "config", "runs", "seconds"} <= attrs


@pytest.fixture(scope="module")
def real_study_db(tmp_path_factory):
    """The study.db of a finished one-cell study, and its study file."""
    folder = tmp_path_factory.mktemp("real")
    path = write_study(folder, space={"optimizer.lr": [0.01]})
    run_study(path, study_dir=folder / "s")
    return path, (folder / "s" / "study.db").read_bytes()


def _garbage(n: int) -> bytes:
    return bytes((i * 37 + 11) % 256 for i in range(n))  # the same bytes every run, not valid UTF-8


def _overwrite(data: bytes, at: int, text: bytes) -> bytes:
    return data[:at] + text + data[at + len(text):]


def _json_at(data: bytes) -> int:
    return data.index(b'"optimizer.lr"')  # inside a stored JSON value: SQLite's own check passes there


@pytest.mark.parametrize("damage", [
    lambda d: _overwrite(d, 0, _garbage(100)),                                # the SQLite header
    lambda d: _overwrite(d, 4096, _garbage(4096)),                            # the whole second page
    lambda d: _overwrite(d, _json_at(d) // 4096 * 4096, _garbage(2000)),      # a page holding trial data
    lambda d: _overwrite(d, _json_at(d), _garbage(14)),                       # text that is not UTF-8
    lambda d: _overwrite(d, _json_at(d), b"{{{{"),                            # JSON that does not parse
], ids=["header", "page 2", "data page", "utf8", "json"])
def test_a_damaged_study_db_is_one_clear_error_in_every_command(real_study_db, tmp_path, capsys, damage):
    path, data = real_study_db
    (tmp_path / "s").mkdir()
    db = tmp_path / "s" / "study.db"
    db.write_bytes(damage(data))
    for argv in (["study", "status", str(path)], ["report", str(tmp_path / "s")], ["study", str(path), "--quiet"]):
        assert main([*argv, *(["--out", str(tmp_path / "s")] if argv[0] == "study" else [])]) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith(f"error: {db} is not a readable SQLite database (damaged?"), err
        assert err.endswith("restore it from a copy, or move it aside to start the study again\n")
        assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "s" / "trials").exists()  # nothing trained on a study that cannot be read


def test_an_emptied_study_db_is_no_traceback(real_study_db, tmp_path, capsys):
    path, _ = real_study_db
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "study.db").write_bytes(b"")
    assert main(["study", "status", str(path), "--out", str(tmp_path / "s")]) == 2
    assert capsys.readouterr().err == f"error: no study 'tiny' in the storage; run `segtune study {path}` first\n"
    assert main(["report", str(tmp_path / "s")]) == 2
    assert capsys.readouterr().err.startswith("error: the storage holds 0 studies")
