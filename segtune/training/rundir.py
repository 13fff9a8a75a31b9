"""The run directory: where it goes, how it is started or resumed, and its files written atomically.

A run (training or pre-training) writes ``config.yaml`` first, appends ``metrics.csv`` (with
TensorBoard events beside it) every epoch and ``summary.json`` last: a folder with a
``summary.json`` is a finished run and is never overwritten. Every file but ``metrics.csv``
is written through :func:`write_atomic` (a temporary file in the same folder, fsync, rename), so
a kill or a full disk during a write leaves the previous file intact.
"""

from __future__ import annotations

import csv
import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

import yaml

from segtune.config import Config, build_config
from segtune.errors import ConfigError, SegtuneError, StorageError

__all__ = ["MetricsLog", "RunResult", "check_resumable", "create_run_dir", "default_run_dir", "prepare_run_dir",
           "saved_config", "write_atomic", "write_json_atomic", "write_text_atomic"]

_UMASK = os.umask(0)
os.umask(_UMASK)


@dataclass
class RunResult:
    """What a finished run leaves: its directory, its summary and its per-epoch history."""

    run_dir: Path
    summary: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)


def write_atomic(path: str | Path, write: Callable[[Any], None], mode: str) -> None:
    """Call ``write(file)`` on a temporary file beside ``path``, fsync it and rename it over ``path``.

    Args:
        path: the target file; its folder is made if missing.
        write: writes the content to the open file.
        mode: ``"w"`` (text) or ``"wb"`` (bytes).

    Raises:
        StorageError: the write failed (disk full, permissions); the previous file is intact.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.chmod(fd, 0o666 & ~_UMASK)  # as open() would make it (mkstemp makes 0600): shared study folders
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as err:  # torch.save reports a failed write as RuntimeError
        if tmp:
            Path(tmp).unlink(missing_ok=True)
        kept = f"the previous {path.name} is intact; " if path.exists() else ""
        raise StorageError(f"cannot write {path}: {err}; {kept}free disk space or choose a writable "
                           f"directory, then resume") from None
    except BaseException:
        if tmp:
            Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(text: str, path: str | Path) -> None:
    """Write ``text`` to ``path`` via a temporary file, fsync and rename."""
    write_atomic(path, lambda f: f.write(text), "w")


def write_json_atomic(obj: Any, path: str | Path) -> None:
    """Write ``obj`` as indented JSON to ``path`` via a temporary file, fsync and rename."""
    write_text_atomic(json.dumps(obj, indent=2) + "\n", path)


def default_run_dir(config: Config, root: str | Path = "runs", *, suffix: str = "") -> Path:
    """``ROOT/<name><suffix>-<timestamp>``, e.g. ``runs/tissue-pretrain-20250101-120000``."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path(root) / f"{config.name}{suffix}-{stamp}"


def prepare_run_dir(run_dir: Path) -> Path:
    """Make ``run_dir`` and check that it is writable and holds no finished run.

    Raises:
        SegtuneError: ``run_dir`` holds a finished run (its ``summary.json``).
        StorageError: ``run_dir`` cannot be made or written.
    """
    if (run_dir / "summary.json").exists():
        raise SegtuneError(f"{run_dir} already holds a finished run (summary.json); "
                           f"choose another --out or delete that folder")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:  # a StorageError: a study stops there and runs the trial again on resume
        raise StorageError(f"cannot write the run directory {run_dir}: {err.strerror}; "
                           f"choose a writable --out, or free disk space") from None
    return run_dir


def create_run_dir(config: Config, out_dir: str | Path | None, *, suffix: str = "") -> Path:
    """Start a run directory (``out_dir``, default :func:`default_run_dir`) with the resolved ``config.yaml``."""
    run_dir = prepare_run_dir(Path(out_dir) if out_dir else default_run_dir(config, suffix=suffix))
    write_text_atomic(yaml.safe_dump(config.to_dict(), sort_keys=False), run_dir / "config.yaml")
    return run_dir


def saved_config(run_dir: str | Path) -> dict[str, Any]:
    """The config tree a run directory's ``config.yaml`` holds, with the defaults of fields added to
    segtune since it was written (``train.max_minutes``), as the run had them; as written if it is no
    longer a valid config (it then differs from any config it is compared with)."""
    saved = yaml.safe_load((Path(run_dir) / "config.yaml").read_text())
    try:
        return build_config(saved).to_dict()
    except ConfigError:
        return saved


def check_resumable(out_dir: str | Path | None, config: Config) -> Path:
    """The unfinished run directory ``out_dir`` that ``config`` continues, cleared of interrupted writes.

    Raises:
        SegtuneError: no ``out_dir``, a finished run, no run started there, or a config that
            differs from the run's ``config.yaml`` (the message names the sections).
    """
    if out_dir is None:
        raise SegtuneError("--resume needs --out: the directory of the run to continue")
    run_dir = Path(out_dir)
    if (run_dir / "summary.json").exists():
        raise SegtuneError(f"{run_dir} is already finished (summary.json); nothing to resume")
    if not (run_dir / "config.yaml").is_file():
        raise SegtuneError(f"{run_dir} has no config.yaml: no run was started there; start it without --resume")
    for stale in run_dir.glob(".*.tmp"):  # the temporary file of a write that a kill interrupted
        stale.unlink(missing_ok=True)
    saved, wanted = saved_config(run_dir), config.to_dict()
    if saved != wanted:
        changed = sorted(k for k in set(saved) | set(wanted) if saved.get(k) != wanted.get(k))
        raise SegtuneError(f"{run_dir}: the config differs from the run's config.yaml in {', '.join(changed)}; "
                           f"resume with the same config and overrides")
    return run_dir


class MetricsLog:
    """metrics.csv (appended and flushed every epoch) plus TensorBoard scalars.

    Args:
        run_dir: the run directory.
        columns: the CSV columns; a row's other keys go to TensorBoard only.
        earlier: rows written again first (a resumed run keeps those of the epochs before its checkpoint).
    """

    def __init__(self, run_dir: Path, columns: list[str], earlier: list[dict[str, Any]] = ()) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.columns = columns
        self.file = open(run_dir / "metrics.csv", "w", newline="")
        self.csv = csv.DictWriter(self.file, fieldnames=columns, extrasaction="ignore")
        self.csv.writeheader()
        for row in earlier:
            self._write_csv(row)
        self.tb = SummaryWriter(log_dir=str(run_dir))

    def _write_csv(self, row: dict[str, Any]) -> None:
        try:
            self.csv.writerow({k: row.get(k, "") for k in self.columns})
            self.file.flush()
        except OSError as err:
            raise StorageError(f"cannot write {self.file.name}: {err}; free disk space or choose a "
                               f"writable directory, then resume") from None

    def write(self, row: dict[str, Any]) -> None:
        """Append ``row`` (with its ``epoch``, and its ``step`` in a run budgeted in steps) to metrics.csv and
        its finite numbers to TensorBoard, at the step when there is one, else at the epoch."""
        self._write_csv(row)
        at = row.get("step", row["epoch"])
        for key, value in row.items():
            if key not in ("epoch", "step") and isinstance(value, (int, float)) and math.isfinite(value):
                self.tb.add_scalar(key.replace("_", "/", 1), value, at)
        self.tb.flush()

    def close(self) -> None:
        """Close metrics.csv and the TensorBoard writer."""
        self.file.close()
        self.tb.close()
