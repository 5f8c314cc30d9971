"""Workdirs and data paths that are URLs (gs://bucket/run, any scheme etils.epath knows):
they pass through untouched, to Orbax (which writes gs:// itself, through TensorStore) and
to the files mdistill writes (through etils.epath, which uses fsspec: gcsfs for gs://, from
the '.[gcs]' extra); a local path is made absolute as before.

An object store has no flock: a URL workdir is held with a lease instead, the object
<workdir>/.lease, naming its holder (a random id, host, pid, start time) and when it
expires; a thread refreshes it while the run lasts. A second run is refused while the
lease is live. It is a best-effort guard: two runs starting within the same second can
both believe they won (each re-reads the lease after writing it, which narrows that
window without closing it); a holder killed without releasing it blocks the workdir until
the lease expires (MDISTILL_LEASE_SECONDS, default 300), except for a rerun on the same
host, which takes over a lease whose process is gone."""

from __future__ import annotations

import contextlib
import io
import json
import os
import posixpath
import re
import socket
import threading
import time
import uuid

LEASE_FILE = ".lease"
LEASE_SECONDS = 300.0  # MDISTILL_LEASE_SECONDS overrides; the holder refreshes it every third of that


def is_url(path) -> bool:
    """A path with a scheme (gs://, s3://, ...), which the local filesystem cannot take."""
    return re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", str(path)) is not None


def resolve(path: str) -> str:
    """A URL unchanged; a local path made absolute."""
    return str(path) if is_url(path) else os.path.abspath(path)


def join(path: str, *parts: str) -> str:
    return posixpath.join(str(path), *parts) if is_url(path) else os.path.join(path, *parts)


def epath(path):
    from etils import epath as ep

    return ep.Path(path)


def _fresh(path: str) -> str:
    """`path`, with fsspec's cached listings of it and its folders forgotten: another process
    (a rival run, a resumed one) may have written there since they were read."""
    from etils.epath import backend

    with contextlib.suppress(Exception):  # a backend without a cache: nothing to forget
        backend.fsspec_backend.fs(path).invalidate_cache(str(path).rstrip("/"))
    return path


def makedirs(path: str) -> None:
    """os.makedirs(exist_ok=True), or its object-store equivalent."""
    if is_url(path):
        epath(path).mkdir(parents=True, exist_ok=True)
    else:
        os.makedirs(path, exist_ok=True)


def exists(path: str) -> bool:
    return epath(_fresh(path)).exists() if is_url(path) else os.path.exists(path)


def isdir(path: str) -> bool:
    return epath(_fresh(path)).is_dir() if is_url(path) else os.path.isdir(path)


def listdir(path: str) -> list[str]:
    return [p.name for p in epath(_fresh(path)).iterdir()] if is_url(path) else os.listdir(path)


def read_bytes(path: str) -> bytes:
    if is_url(path):
        return epath(_fresh(path)).read_bytes()
    with open(path, "rb") as f:
        return f.read()


def write_bytes(path: str, payload: bytes) -> None:
    """One object written whole: an object store shows it only once its upload completes."""
    epath(path).write_bytes(payload)


def remove(path: str) -> None:
    epath(path).unlink() if is_url(path) else os.remove(path)


def rename(path: str, target: str) -> None:
    """A local rename; on an object store a copy of every object, then the originals removed."""
    if is_url(path):
        epath(path).rename(target)
    else:
        os.rename(path, target)


# ---- the lease ----------------------------------------------------------------------------
def lease_seconds() -> float:
    value = os.environ.get("MDISTILL_LEASE_SECONDS", "")
    try:
        seconds = float(value) if value else LEASE_SECONDS
    except ValueError:
        seconds = -1.0
    if seconds <= 0:
        raise ValueError(f"MDISTILL_LEASE_SECONDS={value!r}: expected a positive number of seconds")
    return seconds


def describe(lease: dict) -> str:
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(lease.get("started", 0)))
    left = lease.get("expires", 0) - time.time()
    return (f"pid {lease.get('pid')} on {lease.get('host')} since {started} (lease {lease.get('holder', '?')[:8]}, "
            f"expires in {max(left, 0):.0f} s unless refreshed)")


def _read_lease(path: str) -> dict | None:
    try:
        return json.loads(read_bytes(path))
    except FileNotFoundError:
        return None
    except (ValueError, UnicodeDecodeError):  # a torn or foreign object: nobody's lease
        return None


def _gone(lease: dict) -> bool:
    """The holder's process ended, as far as this host can tell (only for a lease of this host)."""
    if lease.get("host") != socket.gethostname():
        return False
    try:
        os.kill(int(lease.get("pid", 0)), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, ValueError, OverflowError):
        return False
    return False


class Lease:
    """The lease on a URL workdir (see the module's docstring). acquire() returns None when
    held, else a line describing the live holder; release() deletes it if it is still ours."""

    def __init__(self, workdir: str, seconds: float | None = None, settle: float = 1.0):
        self.path = join(workdir, LEASE_FILE)
        self.seconds = seconds or lease_seconds()
        self.settle = settle  # seconds between writing the lease and reading it back
        self.record = {"holder": uuid.uuid4().hex, "host": socket.gethostname(), "pid": os.getpid(),
                       "started": time.time()}
        self._stop = threading.Event()
        self._thread = None
        self.lost = None  # set by the refresher when another holder replaced this lease

    def _write(self) -> None:
        now = time.time()
        self.record.update(refreshed=now, expires=now + self.seconds)
        write_bytes(self.path, json.dumps(self.record).encode())

    def acquire(self) -> str | None:
        current = _read_lease(self.path)
        if current and current.get("holder") != self.record["holder"]:
            if current.get("expires", 0) > time.time() and not _gone(current):
                return describe(current)
        self._write()
        time.sleep(self.settle)  # a rival writing at the same moment: the last write wins, and both read it
        current = _read_lease(self.path)
        if not current or current.get("holder") != self.record["holder"]:
            return describe(current) if current else "another run (the lease changed while it was taken)"
        self._thread = threading.Thread(target=self._refresh, name="mdistill-lease", daemon=True)
        self._thread.start()
        return None

    def _refresh(self) -> None:
        while not self._stop.wait(self.seconds / 3):
            try:
                current = _read_lease(self.path)
                if current and current.get("holder") != self.record["holder"]:
                    self.lost = describe(current)
                    print(f"WARNING: the lease on {self.path} was taken over by {self.lost}: another run now "
                        "writes into this workdir", flush=True)
                    return
                self._write()
            except Exception as e:  # a failed refresh: the next one may work; the lease lasts until it expires
                print(f"WARNING: could not refresh the lease {self.path} ({type(e).__name__}: {e})", flush=True)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with contextlib.suppress(Exception):
            current = _read_lease(self.path)
            if current and current.get("holder") == self.record["holder"]:
                remove(self.path)


def png_bytes(picture) -> bytes:
    """An RGB(A) uint8 array as PNG bytes (for pictures written to a URL workdir)."""
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(picture).save(out, format="PNG", compress_level=1)
    return out.getvalue()
