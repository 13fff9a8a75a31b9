"""The study's Optuna storage: its URL, its database, and the faults of dead workers and full disks.

A study lives in an Optuna storage: by default ``<study dir>/study.db`` (SQLite); with
``storage="postgresql://..."`` on a server that workers on other machines join (Optuna's own
distributed mode). ``postgresql://`` uses the installed psycopg2 driver.

A password never needs to be in the URL: psycopg2 (libpq) reads it from ``PGPASSWORD`` or
``~/.pgpass`` when the URL has none (``postgresql://user@host:5432/db``). Where a URL does hold
one, every message shows it as ``***`` and worker processes get the URL in their environment
(``SEGTUNE_STORAGE``), readable only by their user, never on their command line.
"""

from __future__ import annotations

import contextlib
import random
import re
import sqlite3
import time
import warnings
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import unquote

import optuna
import sqlalchemy
import sqlalchemy.exc
import sqlalchemy.pool
from optuna.storages._rdb import models as _models
from optuna.storages._rdb.storage import _create_scoped_session
from optuna.trial import TrialState

from segtune.errors import ConfigError, StorageError
from segtune.study.spec import StudySpec, load_study

STORAGE_ENV = "SEGTUNE_STORAGE"  # how `segtune study --workers N` hands the storage URL to its workers
RESERVE_BYTES = 1 << 20  # kept free beside a SQLite study.db: room to record why the study stopped on a full disk
_QUERY_PASSWORD = re.compile(r"([?&]password=)([^&]*)")
# scheme://user:PASSWORD@host...: up to the last '@' still followed by a host, so a password holding
# an unescaped '@' or '/' is hidden whole (an '@' in the path or query hides more, never less)
_USERINFO_PASSWORD = re.compile(r"^([\w+.-]+://[^:/@?]*:)(.*)(@[^@/?]*(?:[/?].*)?)$", re.DOTALL)


def redact(url: str) -> str:
    """``url`` with its password (in the user info or a ``password=`` parameter) shown as ``***``.

    Example:
        >>> redact("postgresql://ana:s3cret@db:5432/segtune")
        'postgresql://ana:***@db:5432/segtune'
    """
    return _QUERY_PASSWORD.sub(r"\1***", _USERINFO_PASSWORD.sub(r"\1***\3", url))


def _secrets(url: str) -> list[str]:
    """The passwords of ``url`` as written and decoded, longest first."""
    from sqlalchemy.engine import make_url

    match = _USERINFO_PASSWORD.match(url)
    written = ([match.group(2)] if match else []) + [m.group(2) for m in _QUERY_PASSWORD.finditer(url)]
    try:
        written.append(make_url(url).password or "")  # what the driver is given
    except Exception:  # not a URL: what is written is all there is
        pass
    return sorted({s for w in written if w for s in (w, unquote(w))}, key=len, reverse=True)


def scrub(text: str, url: str) -> str:
    """``text`` (a driver's error message, say) with every password of ``url`` as ``***``."""
    for secret in _secrets(url):
        text = text.replace(secret, "***")
    return text


def resolve(url: str) -> str:
    """The URL to give SQLAlchemy: ``postgresql://`` (the documented form) uses psycopg2.

    SQLAlchemy 2 maps a bare ``postgresql://`` to psycopg 3; segtune installs psycopg2, the
    driver its tests run on, so the bare scheme is pinned to it here. A URL naming its driver
    (``postgresql+psycopg://``) is kept as it is.

    Raises:
        ConfigError: not a URL SQLAlchemy can read, or a password holding an unescaped ``@``.
    """
    from sqlalchemy.engine import make_url

    try:
        host = make_url(url).host or ""
    except Exception as err:  # ArgumentError, or ValueError for a port that is not a number
        raise ConfigError(f"--storage {redact(url)}: not a storage URL ({scrub(str(err), url)}); "
                          "write it as postgresql://user@host:5432/db") from None
    if "@" in host:  # SQLAlchemy ends the password at its first '@'
        raise ConfigError(f"--storage {redact(url)}: the password holds '@'; write it as %40, or leave the "
                          "password out of the URL and set PGPASSWORD (or ~/.pgpass)")
    return "postgresql+psycopg2://" + url.removeprefix("postgresql://") if url.startswith("postgresql://") else url


def open_error(url: str, err: Exception) -> ConfigError:
    """The error for a storage that cannot be opened: the URL and the driver's reason, no password."""
    hint = " (a password is read from PGPASSWORD or ~/.pgpass)" if url.startswith("postgresql") else ""
    return ConfigError(f"cannot open the study storage {redact(url)}: {scrub(str(err), url)}; check --storage{hint}")


class StudyStorage(optuna.storages.RDBStorage):
    """Optuna's RDB storage with the faults of dead workers and full disks handled.

    - A trial RUNNING with no heartbeat row (its worker died between creating it and its first
      heartbeat) is never stale to Optuna, and a grid would wait for its cell forever. Here it is
      stale once it started more than the grace period ago.
    - A heartbeat that cannot be written (the disk under the storage is full) does not end the
      heartbeat thread with a traceback; the trial's own next write meets the same error and
      stops the worker with it (see :func:`storage_fault`).
    - ``reserve``: a file of :data:`RESERVE_BYTES` beside a SQLite database, deleted when a write
      fails, so that the reason and the trial's end can still be written on a full disk.
    """

    reserve: Path | None = None

    def record_heartbeat(self, trial_id: int) -> None:
        try:
            super().record_heartbeat(trial_id)
        except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError):
            pass

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        stale = super()._get_stale_trial_ids(study_id)
        started_before = (datetime.now(timezone.utc).replace(tzinfo=None)  # stored as UTC without a zone
                          - timedelta(seconds=self.grace_period or 2 * self.heartbeat_interval))
        trial = _models.TrialModel
        with _create_scoped_session(self.scoped_session) as session:
            silent = (session.query(trial.trial_id)
                      .filter(trial.study_id == study_id, trial.state == TrialState.RUNNING,
                              ~trial.heartbeats.any(), trial._datetime_start_utc < started_before).all())
        return stale + [row[0] for row in silent if row[0] not in stale]

    def keep_reserve(self) -> None:
        if self.reserve is not None and not self.reserve.exists():
            try:
                self.reserve.write_bytes(bytes(RESERVE_BYTES))
            except OSError:  # no room for it: the study runs without
                self.reserve.unlink(missing_ok=True)

    def release_reserve(self) -> None:
        if self.reserve is not None:
            self.reserve.unlink(missing_ok=True)


def storage_fault(err: BaseException) -> str | None:
    """The database's own message when ``err`` is a failed storage read or write, else None."""
    seen: BaseException | None = err
    while seen is not None:  # an operational error: a full disk, an I/O error, a lost connection
        if isinstance(seen, (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InternalError)):
            return str(seen.orig if seen.orig is not None else seen).strip()
        if isinstance(seen, sqlalchemy.exc.DBAPIError):  # a constraint, a bad value: the trial's own error
            return None
        seen = seen.__cause__ or seen.__context__
    return None


# the key of the PostgreSQL advisory lock segtune's workers hold while Optuna creates or checks its tables
SCHEMA_LOCK = 0x5E67_7E5E
# seconds a worker waits for that lock: far longer than workers starting together take in turn to set
# up the tables (well under a second each), short enough that a worker hung while holding it is told
SCHEMA_LOCK_TIMEOUT = 300.0
_LOCK_NOT_AVAILABLE = "55P03"  # PostgreSQL's SQLSTATE of a wait ended by lock_timeout


@contextlib.contextmanager
def _schema_lock(url: str, timeout: float = SCHEMA_LOCK_TIMEOUT, given: str | None = None):
    """On PostgreSQL, one worker at a time sets up Optuna's tables: workers starting together on a
    fresh database would race to create them (CREATE TABLE IF NOT EXISTS is not atomic there, and
    the losers fail on a duplicate key). A session-level advisory lock, released when its
    connection closes, even if the worker dies; waited for at most ``timeout`` seconds (this
    connection's ``lock_timeout``), as a worker that hangs holding it would keep every other one
    waiting (``given``: the URL as the user wrote it, for the message). SQLite locks its file itself.

    Raises:
        StorageError: the lock was not free within ``timeout``; the message names the database,
            how to find the connection that holds it and how to end it.
    """
    if not url.startswith("postgresql"):
        yield
        return
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.connect() as connection:
            connection.execute(sqlalchemy.text("SELECT set_config('lock_timeout', :ms, false)"),
                               {"ms": str(max(1, round(timeout * 1000)))})  # 0 would wait for ever
            try:
                connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": SCHEMA_LOCK})
            except sqlalchemy.exc.OperationalError as err:
                code = getattr(err.orig, "pgcode", None) or getattr(err.orig, "sqlstate", None)
                if code != _LOCK_NOT_AVAILABLE:
                    raise
                raise _lock_timeout(given or url, engine.url.database, timeout) from None
            connection.commit()
            yield
    finally:
        engine.dispose()


def _lock_timeout(url: str, database: str | None, timeout: float) -> StorageError:
    holder = (f"SELECT pid, usename, client_addr, backend_start, state FROM pg_stat_activity JOIN pg_locks USING "
              f"(pid) WHERE locktype = 'advisory' AND granted AND datname = '{database}' "
              f"AND classid = 0 AND objid = {SCHEMA_LOCK} AND objsubid = 1")
    return StorageError(f"study storage {redact(url)}: waited {timeout:g} s for the lock with which segtune's "
                        f"workers set up Optuna's tables in database {database!r}, and another connection still "
                        f"holds it (a worker hung while opening the storage?). Find it with `{holder}`, stop that "
                        f"worker (or `SELECT pg_terminate_backend(pid)` for its pid), then start this one again")


def open_storage(spec: StudySpec, study_dir: Path, url: str | None = None, *,
                 lock_timeout: float = SCHEMA_LOCK_TIMEOUT) -> StudyStorage:
    """The study's RDB storage with heartbeats; a dead worker's trial is re-queued once stale.

    Args:
        spec: the study (heartbeat interval, grace period, retries).
        study_dir: where the default SQLite file ``study.db`` lives.
        url: an SQLAlchemy URL (``postgresql://user@host/db``; the password from ``PGPASSWORD`` or
            ``~/.pgpass``); default the SQLite file.
        lock_timeout: on PostgreSQL, the seconds to wait for the lock under which one worker at a
            time sets up Optuna's tables (see :func:`_schema_lock`).

    Raises:
        ConfigError: an unusable URL or server; the message never shows a password.
        StorageError: on PostgreSQL, another connection held the schema lock past ``lock_timeout``
            (not tried again: the wait is the timeout already).
    """
    if url is None:
        study_dir.mkdir(parents=True, exist_ok=True)
        check_study_file(study_dir / "study.db")
        url = f"sqlite:///{(study_dir / 'study.db').resolve()}"
    given, url = url, resolve(url)
    engine_kwargs = ({"connect_args": {"timeout": 60}} if url.startswith("sqlite") else  # a server: 1 idle connection,
                     {"pool_pre_ping": True, "pool_size": 1, "max_overflow": 1})  # 2 in use (a trial, its heartbeat)
    for attempt in range(3):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=spec.max_retry)
                with _schema_lock(url, lock_timeout, given):
                    storage = StudyStorage(url, engine_kwargs=engine_kwargs, heartbeat_interval=spec.heartbeat_interval,
                                           grace_period=spec.grace_period, heartbeat_stale_trial_callback=retry)
                database = storage.engine.url.database if url.startswith("sqlite") else None
                if database and database != ":memory:":
                    storage.reserve = Path(database).with_name(f".{Path(database).name}.reserve")
                    storage.keep_reserve()
                return storage
        except StorageError:
            raise
        except Exception as err:  # SQLAlchemy / driver errors: an unusable URL or server
            if attempt == 2:
                raise open_error(given, err) from None
            time.sleep(0.5 + random.random())  # a server that is starting, a connection dropped
    raise AssertionError("unreachable")


def check_study_file(path: Path) -> None:
    """Check that an existing SQLite study file reads whole: SQLite's ``quick_check`` of every
    page, then every study and trial read once through Optuna (damaged text or JSON in a row).

    Raises:
        StorageError: the file is not a readable SQLite study database; the message names it and the fix.
    """
    problem = _study_file_problem(path) if path.is_file() else None
    if problem:
        detail = problem.replace("*** in database main ***", "").strip().splitlines()[0].split(" with text ")[0]
        raise StorageError(f"{path} is not a readable SQLite database (damaged? {detail[:160]}): restore it "
                           f"from a copy, or move it aside to start the study again")


def _study_file_problem(path: Path) -> str | None:
    try:
        with contextlib.closing(sqlite3.connect(path, timeout=60)) as db:
            problem = next((row[0] for row in db.execute("PRAGMA quick_check") if row[0] != "ok"), None)
            has_version = db.execute("SELECT 1 FROM sqlite_master WHERE name = 'alembic_version'").fetchone()
            versioned = bool(has_version and db.execute("SELECT 1 FROM alembic_version").fetchone())
    except sqlite3.OperationalError:  # locked past the timeout, or unopenable: the storage says why
        return None
    except sqlite3.DatabaseError as err:  # "file is not a database", "database disk image is malformed"
        return str(err)
    if problem:
        return problem
    if not versioned:  # new, or its tables are being made by another command started at the same time
        return None
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # its warning when it falls back to slower reads
    try:
        storage = optuna.storages.RDBStorage(f"sqlite:///{path.resolve()}",
                                             engine_kwargs={"connect_args": {"timeout": 60}})
        for name in optuna.get_all_study_names(storage):
            study_id = storage.get_study_id_from_name(name)
            storage.get_study_user_attrs(study_id)
            storage.get_study_system_attrs(study_id)
            storage.get_all_trials(study_id, deepcopy=False)
        storage.engine.dispose()
    except Exception as err:  # noqa: BLE001 - undecodable text, JSON or state in a row
        while err.__cause__ is not None:
            err = err.__cause__
        return f"{type(err).__name__}: {err}"
    finally:
        optuna.logging.set_verbosity(verbosity)
    return None


def fail_stale_trials(study: optuna.Study) -> None:
    """Optuna's check for trials of dead workers (experimental in Optuna, so quietly)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def default_study_dir(spec: StudySpec) -> Path:
    """Where a study keeps its run directories and SQLite storage by default: ``runs/<name>``."""
    return Path("runs") / spec.name


def load_existing_study(path: str | Path, *, study_dir: str | Path | None = None,
                        storage: str | None = None) -> optuna.Study:
    """Open a study that exists, for ``segtune study status``.

    Raises:
        ConfigError: no study of that name in the storage.
    """
    spec, _ = load_study(path)
    study_dir = Path(study_dir) if study_dir else default_study_dir(spec)
    if storage is None and not (study_dir / "study.db").exists():
        raise ConfigError(f"no study {spec.name!r} yet: {study_dir / 'study.db'} does not exist; "
                          f"run `segtune study {path}` first")
    try:
        return optuna.load_study(study_name=spec.name, storage=open_storage(spec, study_dir, storage))
    except KeyError:
        raise ConfigError(f"no study {spec.name!r} in the storage; run `segtune study {path}` first") from None


__all__ = ["RESERVE_BYTES", "SCHEMA_LOCK", "SCHEMA_LOCK_TIMEOUT", "STORAGE_ENV", "StudyStorage", "check_study_file", "default_study_dir",
           "fail_stale_trials", "load_existing_study", "open_error", "open_storage", "redact", "resolve", "scrub",
           "storage_fault"]
