"""segtune download: fetch, MD5 check and unpack, on local files only (file:// and 127.0.0.1)."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import tarfile
import threading
from pathlib import Path

import pytest

from segtune.cli import main
from segtune.data.download import Archive, fetch, md5sum, unpack
from segtune.errors import DataError


def make_tar(path: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def served(tmp_path):
    """A folder holding annotations.tar.gz, and the archive's MD5."""
    site = tmp_path / "site"
    site.mkdir()
    tar = make_tar(site / "annotations.tar.gz", {"annotations/trainval.txt": b"a 1 1 1\n"})
    return site, hashlib.md5(tar.read_bytes()).hexdigest()


def test_fetch_file_url_checks_md5_and_unpacks(tmp_path, served):
    site, md5 = served
    archive = Archive("annotations.tar.gz", (f"{site.as_uri()}/annotations.tar.gz",), md5)
    (tmp_path / "out").mkdir()
    path = fetch(archive, tmp_path / "out", verbose=False)
    assert md5sum(path) == md5
    unpack(path, tmp_path / "out")
    assert (tmp_path / "out" / "annotations" / "trainval.txt").read_text() == "a 1 1 1\n"


def test_fetch_tries_the_next_url_and_skips_a_good_file(tmp_path, served):
    site, md5 = served
    archive = Archive("annotations.tar.gz", ((tmp_path / "missing").as_uri(), f"{site.as_uri()}/annotations.tar.gz"), md5)
    path = fetch(archive, tmp_path, verbose=False)
    # a second fetch finds the checked file and touches no URL
    offline = Archive("annotations.tar.gz", ("file:///nonexistent/annotations.tar.gz",), md5)
    assert fetch(offline, tmp_path, verbose=False) == path


def test_fetch_over_http(tmp_path, served):
    site, md5 = served
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(site))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/annotations.tar.gz"
        assert md5sum(fetch(Archive("annotations.tar.gz", (url,), md5), tmp_path, verbose=False)) == md5
    finally:
        server.shutdown()
        server.server_close()


def test_checksum_mismatch_deletes_the_file(tmp_path, served):
    site, _ = served
    archive = Archive("annotations.tar.gz", (f"{site.as_uri()}/annotations.tar.gz",), "0" * 32)
    with pytest.raises(DataError, match=r"annotations\.tar\.gz: MD5 [0-9a-f]{32} but 0{32} was expected"):
        fetch(archive, tmp_path, verbose=False)
    assert not (tmp_path / "annotations.tar.gz").exists()


def test_unreachable_url_is_explained(tmp_path):
    archive = Archive("x.tar.gz", ((tmp_path / "nope.tar.gz").as_uri(),), "0" * 32)
    with pytest.raises(DataError, match=r"cannot download x\.tar\.gz .* fetch the file by hand"):
        fetch(archive, tmp_path, verbose=False)


def test_unsafe_archive_member_is_refused(tmp_path):
    tar = make_tar(tmp_path / "evil.tar.gz", {"../outside.txt": b"x"})
    with pytest.raises(DataError, match=r"evil\.tar\.gz: cannot unpack"):
        unpack(tar, tmp_path / "out")
    assert not (tmp_path / "outside.txt").exists()


def test_cli_download_from_a_mirror_with_the_wrong_files(tmp_path, served, capsys):
    site, _ = served
    make_tar(site / "images.tar.gz", {"images/a.jpg": b"not the real archive"})
    code = main(["download", "oxford-pet", str(tmp_path / "pets"), "--mirror", site.as_uri()])
    assert code == 2
    assert "images.tar.gz: MD5" in capsys.readouterr().err


def test_cli_unknown_dataset_suggests_one(tmp_path, capsys):
    assert main(["download", "oxford-pets", str(tmp_path)]) == 2
    assert "did you mean 'oxford-pet'" in capsys.readouterr().err
