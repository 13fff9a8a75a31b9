"""Study storage URLs: the installed PostgreSQL driver for ``postgresql://``, and no password shown.

A password never needs to be in the URL: psycopg2 (libpq) reads it from ``PGPASSWORD`` or
``~/.pgpass`` when the URL has none (``postgresql://user@host:5432/db``). Where a URL does hold
one, every message shows it as ``***`` and worker processes get the URL in their environment
(``SEGTUNE_STORAGE``), readable only by their user, never on their command line.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

from segtune.errors import ConfigError

STORAGE_ENV = "SEGTUNE_STORAGE"  # how `segtune study --workers N` hands the storage URL to its workers
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


__all__ = ["STORAGE_ENV", "open_error", "redact", "resolve", "scrub"]
