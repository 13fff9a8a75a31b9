"""``segtune download NAME DIR``: fetch a public dataset's archives, check their MD5, unpack them.

Archives are kept in ``DIR`` after unpacking, so a second call checks them and unpacks again
without downloading. Nothing else in segtune touches the network, and nothing does at import.

MONAI's ``monai.apps.download_url`` / ``extractall`` (and ``download_and_extract``) do not fit:

* ``download_url`` has no timeout (``urlretrieve``), so a stalled mirror hangs forever; it writes
  the whole file into the system temporary folder first (800 MB into an often small ``/tmp``);
  it returns without a file or an error on ``PermissionError`` and ``NotADirectoryError``; it
  refuses a damaged earlier download instead of fetching it again; and its hash error does not say
  the hash found, nor try another URL.
* ``extractall`` skips unpacking when the archive's folder is not empty, so an unpack that was
  interrupted midway is never completed; the standard library's ``tarfile`` data filter refuses
  unsafe members (``..``, absolute paths, links outside) as MONAI's check does.

So the download is ``urllib`` with a timeout, into a ``.part`` file next to the target, with a
``tqdm`` progress bar on a terminal; the hash is ``hashlib.file_digest``.
"""

from __future__ import annotations

import hashlib
import shutil
import sys
import tarfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from segtune.errors import DataError
from segtune.registry import suggest

__all__ = ["DATASETS", "TIMEOUT", "Archive", "download", "fetch", "md5sum", "unpack"]


@dataclass(frozen=True)
class Archive:
    """One archive of a dataset: its file name, where to fetch it (tried in order) and its MD5."""

    filename: str
    urls: tuple[str, ...]
    md5: str


_PETS_SITES = ("https://thor.robots.ox.ac.uk/datasets/pets", "https://www.robots.ox.ac.uk/~vgg/data/pets/data")

DATASETS: dict[str, tuple[Archive, ...]] = {
    # Oxford-IIIT Pet (Parkhi et al., CVPR 2012), CC BY-SA 4.0; about 800 MB in all.
    "oxford-pet": (
        Archive("images.tar.gz", tuple(f"{s}/images.tar.gz" for s in _PETS_SITES), "5c4f3ee8e5d25df40f4fd59a7f44e54c"),
        Archive("annotations.tar.gz", tuple(f"{s}/annotations.tar.gz" for s in _PETS_SITES),
                "95a8c909bbe2e81eed6a22bccdf3f68f"),
    ),
}

CHUNK = 1 << 20
TIMEOUT = 60  # seconds without an answer before a URL counts as unreachable


def md5sum(path: Path) -> str:
    """The MD5 hex digest of a file."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "md5").hexdigest()


def _fetch_url(url: str, target: Path, verbose: bool) -> None:
    part = target.with_name(target.name + ".part")
    with urllib.request.urlopen(url, timeout=TIMEOUT) as response, open(part, "wb") as out:
        total = int(response.headers.get("Content-Length") or 0) or None
        if verbose:
            print(f"downloading {url}", flush=True)
        # disable=None: a bar on a terminal only, none in logs or pipes
        with tqdm.wrapattr(out, "write", total=total, desc=target.name, file=sys.stderr,
                           disable=None if verbose else True) as sink:
            shutil.copyfileobj(response, sink, CHUNK)
    part.replace(target)


def fetch(archive: Archive, folder: Path, *, verbose: bool = True) -> Path:
    """Download ``archive`` into ``folder`` unless a file with the right MD5 is already there.

    Each URL is tried in turn; the first that answers is used.

    Returns:
        The path of the checked archive.

    Raises:
        DataError: no URL could be read, or the file's MD5 is not the expected one.
    """
    target = folder / archive.filename
    if target.is_file() and md5sum(target) == archive.md5:
        return target
    problems = []
    for url in archive.urls:
        try:
            _fetch_url(url, target, verbose)
            break
        except (urllib.error.URLError, OSError, ValueError) as err:
            problems.append(f"{url}: {getattr(err, 'reason', err)}")
    else:
        raise DataError(f"cannot download {archive.filename} ({'; '.join(problems)}); check the internet "
                        f"connection, or fetch the file by hand into {folder} and run the command again")
    found = md5sum(target)
    if found != archive.md5:
        target.unlink()
        raise DataError(f"{target}: MD5 {found} but {archive.md5} was expected; the download is corrupt or "
                        f"the server sent another file; it was deleted: run the command again")
    return target


def unpack(path: Path, folder: Path) -> None:
    """Unpack a tar archive into ``folder``, refusing members that would land outside it."""
    try:
        with tarfile.open(path) as tar:
            tar.extractall(folder, filter="data")
    except (tarfile.TarError, OSError, EOFError) as err:
        raise DataError(f"{path}: cannot unpack ({err}); delete it and run the command again") from None


def download(name: str, folder: str | Path, *, mirror: str | None = None, verbose: bool = True) -> Path:
    """Fetch, check and unpack the dataset ``name`` into ``folder``.

    Args:
        name: a key of :data:`DATASETS`, e.g. ``"oxford-pet"``.
        folder: where the archives and the unpacked files go (created if needed).
        mirror: a base URL (``https://...``, ``file:///...``) that holds the same archive files;
            tried instead of the official sites.
        verbose: print what is downloaded.

    Returns:
        ``folder``, ready to use as ``data.path``.

    Raises:
        DataError: unknown name, download failure or checksum mismatch.

    Example:
        >>> download("oxford-pet", "data/oxford-pet")  # doctest: +SKIP
    """
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}{suggest(name, list(DATASETS))}; choose one of: "
                        f"{', '.join(DATASETS)}")
    folder = Path(folder).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    for archive in DATASETS[name]:
        if mirror:
            archive = Archive(archive.filename, (f"{mirror.rstrip('/')}/{archive.filename}",), archive.md5)
        unpack(fetch(archive, folder, verbose=verbose), folder)
    return folder
