"""A checkpoint of the metrics state on disk, so that a restart can skip the rebuild.

Rebuilding ``MetricsState`` from every stored trade takes 32 to 48 s per
million trades on a slow 2-core machine (docs/benchmarks.md). A checkpoint is the whole state, pickled, in
``<database>.metrics-checkpoint`` beside the database, with a header that
names everything the state depends on:

- the commit sequence number that the state reflects. A checkpoint is used
  only while the database's latest commit still has that number, because a
  trade changed by a later commit cannot be taken out of the state: its
  earlier version is gone;
- the random ids of the database and of the archive file, so that a new
  database at the same path does not match;
- a hash of the source of the code that defines and fills the state, and of
  the Python version, so that an upgrade invalidates it;
- a hash of the metrics settings, the time zone's rules included.

``load_checkpoint_sync`` returns None when anything differs, or when the
file is missing, cut short, damaged or names a class outside the state. It
logs the reason in one line, and the caller rebuilds from the database.
Deleting the file is therefore always safe.

The loader admits only the classes the state is made of, so a tampered file
can make it fail but not run code. The eight columns of the trade series
(up to 8 bytes per resolved trade each) are pickled as out-of-band buffers,
which a worker thread writes from the arrays' own memory while the actor
waits. Pickling the rest pauses the event loop for a time that grows with
the number of markets and days, not trades: about 70 ms with 2,000
markets over three years on that machine.
"""

from __future__ import annotations

import collections
import copyreg
import dataclasses
import functools
import hashlib
import importlib
import importlib.resources
import io
import json
import logging
import os
import pickle
import sys
import threading
import zlib
from array import array
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import TZPATH, ZoneInfo

from actors.analytics.calendar import LocalClock
from actors.analytics.settings import MetricsSettings
from actors.analytics.state import MetricsState
from actors.store import StoreIdentity

log = logging.getLogger(__name__)

# Changed whenever the file layout changes; a file of another format is not read.
FORMAT_VERSION = 1

MAGIC = b"tradepulse metrics checkpoint\n"

SUFFIX = ".metrics-checkpoint"

# The modules whose classes make up the state. The loader admits the classes
# defined in these modules and nothing else of the project.
STATE_MODULES = (
    "actors.analytics.calendar",
    "actors.analytics.columns",
    "actors.analytics.forecast",
    "actors.analytics.groups",
    "actors.analytics.returns",
    "actors.analytics.series",
    "actors.analytics.settings",
    "actors.analytics.state",
    "actors.analytics.stats",
    "actors.analytics.values",
)

# Source files whose change invalidates every checkpoint: the state's own
# modules, the trade model that feeds it and the readers that rebuild it.
_PACKAGE_ROOT = Path(__file__).resolve().parents[2]
CODE_FILES = ("actors/analytics/*.py", "actors/trades.py", "actors/messages.py", "actors/store.py",
              "actors/metrics.py")

# Maximum wait for another thread's write of a checkpoint to finish (seconds).
_WRITE_LOCK_TIMEOUT = 60.0
_write_lock = threading.Lock()


def checkpoint_path(database: Path) -> Path:
    """Return the checkpoint's path for ``database``: the same folder and name plus a suffix."""
    return database.with_name(database.name + SUFFIX)


@functools.cache
def code_fingerprint() -> str | None:
    """Return a hash of the code that the state depends on and of the Python version.

    Returns None when a source file cannot be read (an installation without
    sources), because a change of the code could then go unnoticed.
    """
    digest = hashlib.sha256(sys.version.encode())
    for pattern in CODE_FILES:
        paths = sorted(_PACKAGE_ROOT.glob(pattern))
        if not paths:
            return None
        for path in paths:
            digest.update(path.relative_to(_PACKAGE_ROOT).as_posix().encode() + b"\0")
            try:
                digest.update(path.read_bytes())
            except OSError:
                return None
    return digest.hexdigest()


def _zone_data(zone: ZoneInfo) -> bytes:
    """Return the compiled rules of ``zone``, found where ``zoneinfo`` finds them.

    ``zoneinfo`` reads the first file named by the key under ``TZPATH``,
    then the ``tzdata`` package. An operating system update can change the
    rules, and with them the local hour of past trades.
    """
    for base in TZPATH:
        candidate = Path(base) / zone.key
        if candidate.is_file():
            return candidate.read_bytes()
    package, _, name = f"tzdata.zoneinfo.{zone.key.replace('/', '.')}".rpartition(".")
    try:
        return importlib.resources.files(package).joinpath(name).read_bytes()
    except (ModuleNotFoundError, OSError):
        return b""


@functools.cache
def settings_fingerprint(settings: MetricsSettings) -> str:
    """Return a hash of every metrics setting and of the time zone's rules."""
    values: dict[str, str] = {}
    for field in dataclasses.fields(settings):
        value = getattr(settings, field.name)
        values[field.name] = value.key if isinstance(value, ZoneInfo) else repr(value)
    digest = hashlib.sha256(json.dumps(values, sort_keys=True).encode())
    digest.update(_zone_data(settings.zone))
    return digest.hexdigest()


@dataclass(frozen=True)
class CheckpointKey:
    """The fields that a checkpoint must match to be used: its header without sizes and checksum."""

    seq: int
    database_id: str
    archive_id: str | None
    code: str
    settings: str

    @classmethod
    def current(cls, identity: StoreIdentity, settings: MetricsSettings) -> CheckpointKey | None:
        """Return the key of a state at ``identity``'s commit under the running code and ``settings``.

        Returns None when no checkpoint can be trusted: the database has no
        id yet (it was never opened for writing), or the code has no
        readable source.
        """
        code = code_fingerprint()
        if identity.database_id is None or code is None:
            return None
        settings_hash = settings_fingerprint(settings)
        return cls(identity.seq, identity.database_id, identity.archive_id, code, settings_hash)


# ---------------------------------------------------------------------------
# Pickling


def _rebuild_array(typecode: str, buffer: Any) -> array[Any]:
    """Return a new array of ``typecode`` with a copy of ``buffer``'s bytes.

    A bytearray ``buffer`` is emptied once copied, because the unpickler's
    memo keeps the arguments of every call until the load ends, which would
    hold a second copy of every array.
    """
    values = array(typecode)
    values.frombytes(buffer)
    if isinstance(buffer, bytearray):
        buffer.clear()
    return values


def _reduce_array(values: array[Any]) -> tuple[Any, ...]:
    return _rebuild_array, (values.typecode, pickle.PickleBuffer(values))


def _reduce_zone(zone: ZoneInfo) -> tuple[Any, ...]:
    # By key, so that the loader needs only ZoneInfo and not the getattr()
    # through which ZoneInfo pickles itself.
    if zone.key is None:
        raise pickle.PicklingError("a time zone read from a file has no key to store")
    return ZoneInfo, (zone.key,)


def _reduce_clock(clock: LocalClock) -> tuple[Any, ...]:
    # Without its caches of offsets and midnights, which it fills again on demand.
    return LocalClock, (clock.zone,)


@dataclass
class PickledState:
    """A pickled state: the pickle stream and the arrays it refers to as out-of-band buffers.

    While the buffers are held, the arrays cannot grow or shrink (they raise
    BufferError), so ``release`` must run before the state changes again.
    """

    data: bytes
    buffers: list[pickle.PickleBuffer]
    trades: int

    @property
    def size(self) -> int:
        return len(self.data) + sum(buffer.raw().nbytes for buffer in self.buffers)

    def release(self) -> None:
        for buffer in self.buffers:
            buffer.release()
        self.buffers = []


def pickle_state(state: MetricsState) -> PickledState:
    """Pickle ``state`` (protocol 5), leaving its arrays out of band.

    The state must not change until the result is written and released.
    """
    stream = io.BytesIO()
    buffers: list[pickle.PickleBuffer] = []
    pickler = pickle.Pickler(stream, protocol=5, buffer_callback=buffers.append)
    pickler.dispatch_table = {
        **copyreg.dispatch_table,
        array: _reduce_array,
        ZoneInfo: _reduce_zone,
        LocalClock: _reduce_clock,
    }
    try:
        pickler.dump(state)
    except BaseException:
        for buffer in buffers:
            buffer.release()
        raise
    return PickledState(stream.getvalue(), buffers, state.trades_seen)


@functools.cache
def _allowed_globals() -> dict[tuple[str, str], Any]:
    """Return every global that a checkpoint may name, by (module, name)."""
    allowed: dict[tuple[str, str], Any] = {}
    for module_name in STATE_MODULES:
        module = importlib.import_module(module_name)
        for name, value in vars(module).items():
            if isinstance(value, type) and value.__module__ == module_name:
                allowed[(module_name, name)] = value
    for value in (Decimal, ZoneInfo, date):
        allowed[(value.__module__, value.__name__)] = value
    for value in (collections.OrderedDict, collections.defaultdict, collections.deque, collections.Counter):
        allowed[("collections", value.__name__)] = value
    for value in (dict, list, tuple, set, frozenset):
        allowed[("builtins", value.__name__)] = value
    allowed[(__name__, _rebuild_array.__name__)] = _rebuild_array
    return allowed


class _StateUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the globals of ``_allowed_globals``.

    Arrays may take ``budget`` bytes in all: a crafted pickle could otherwise
    rebuild one small memoized buffer into arrays of gigabytes.
    """

    def __init__(self, stream: io.BytesIO, buffers: Iterable[Any], budget: int) -> None:
        super().__init__(stream, buffers=buffers)
        self.budget = budget

    def find_class(self, module: str, name: str) -> Any:
        value = _allowed_globals().get((module, name))
        if value is None:
            raise pickle.UnpicklingError(f"{module}.{name} is not part of the metrics state")
        if value is _rebuild_array:
            return self._rebuild_array_within_budget
        return value

    def _rebuild_array_within_budget(self, typecode: str, buffer: Any) -> array[Any]:
        size = memoryview(buffer).nbytes
        if size > self.budget:
            raise pickle.UnpicklingError("invalid checkpoint: its arrays need more bytes than the file contains")
        self.budget -= size
        return _rebuild_array(typecode, buffer)


def unpickle_state(data: Any, buffers: Iterable[Any], budget: int | None = None) -> MetricsState:
    """Load a state that ``pickle_state`` wrote; raises on any global outside the state's classes.

    ``budget`` caps the bytes of all arrays; by default, the size of ``data``
    and the buffers can hold no more than what was written.
    """
    if budget is None:
        buffers = list(buffers)
        budget = len(data) + sum(memoryview(buffer).nbytes for buffer in buffers)
    state = _StateUnpickler(io.BytesIO(data), buffers, budget).load()
    if not isinstance(state, MetricsState):
        raise pickle.UnpicklingError(f"the pickle contains a {type(state).__name__}, not a MetricsState")
    return state


# ---------------------------------------------------------------------------
# The file


def _header(key: CheckpointKey, pickled: PickledState, checksum: int) -> bytes:
    header = {
        "format": FORMAT_VERSION,
        **dataclasses.asdict(key),
        "pickle_length": len(pickled.data),
        "buffer_lengths": [buffer.raw().nbytes for buffer in pickled.buffers],
        "crc32": checksum,
        "trades": pickled.trades,
        "written_at": datetime.now(UTC).isoformat(),
    }
    return json.dumps(header).encode()


def write_checkpoint_sync(path: Path, key: CheckpointKey, pickled: PickledState) -> bool:
    """Write ``pickled`` to ``path`` atomically, mode 0600; return False if it failed.

    The file is written to ``<path>.tmp``, synced, and renamed over ``path``,
    so that a crash leaves either the old checkpoint or the new one. An
    OSError (a full disk, a read-only folder) is logged and not raised.
    """
    if not _write_lock.acquire(timeout=_WRITE_LOCK_TIMEOUT):
        log.error("metrics: checkpoint %s not written: an earlier write is still running", path)
        return False
    temporary = path.with_name(path.name + ".tmp")
    try:
        checksum = zlib.crc32(pickled.data)
        for buffer in pickled.buffers:
            checksum = zlib.crc32(buffer.raw(), checksum)
        header = _header(key, pickled, checksum)
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "wb") as file:
            # A temporary file left by an older write keeps its mode on open.
            os.fchmod(file.fileno(), 0o600)
            file.write(MAGIC)
            file.write(len(header).to_bytes(4, "big"))
            file.write(header)
            file.write(pickled.data)
            for buffer in pickled.buffers:
                file.write(buffer.raw())
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
        _sync_folder(path.parent)
    except OSError as error:
        log.error("metrics: cannot write checkpoint %s: %s", path, error)
        try:
            temporary.unlink(missing_ok=True)
        except OSError:
            pass
        return False
    finally:
        _write_lock.release()
    return True


def _sync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable, where the system allows syncing a folder."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


class _Unusable(Exception):
    """The checkpoint cannot be used, for the reason in the message.

    ``damaged`` separates a file that is not what it claims (logged as a
    warning) from a valid one that is out of date (the usual case after a
    crash or an upgrade).
    """

    def __init__(self, reason: str, *, damaged: bool = True) -> None:
        super().__init__(reason)
        self.damaged = damaged


def _read_header(file: io.BufferedReader) -> dict[str, Any]:
    if file.read(len(MAGIC)) != MAGIC:
        raise _Unusable("it is not a metrics checkpoint")
    length = int.from_bytes(file.read(4), "big")
    raw = file.read(length)
    if len(raw) != length:
        raise _Unusable("its header is cut short")
    try:
        header = json.loads(raw)
    except ValueError:
        raise _Unusable("its header is not valid JSON") from None
    if not isinstance(header, dict):
        raise _Unusable("its header is not a JSON object")
    return header


def _check_header(header: dict[str, Any], expected: CheckpointKey) -> None:
    """Raise ``_Unusable`` with the first difference between ``header`` and ``expected``."""
    if header.get("format") != FORMAT_VERSION:
        raise _Unusable(
            f"it has format {header.get('format')!r} and this version reads {FORMAT_VERSION}",
            damaged=False,
        )
    if header.get("database_id") != expected.database_id:
        raise _Unusable("it was written for another database file", damaged=False)
    if header.get("archive_id") != expected.archive_id:
        raise _Unusable("it was written for another archive file", damaged=False)
    if header.get("seq") != expected.seq:
        raise _Unusable(
            f"it reflects commit {header.get('seq')!r} and the database is at commit {expected.seq}",
            damaged=False,
        )
    if header.get("code") != expected.code:
        raise _Unusable("the metrics code or the Python version changed since it was written", damaged=False)
    if header.get("settings") != expected.settings:
        raise _Unusable("the metrics settings changed since it was written", damaged=False)


def _count(value: Any, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise _Unusable(f"its header has an invalid {name}: {value!r}")
    return value


def _read_payload(file: io.BufferedReader, header: dict[str, Any]) -> MetricsState:
    """Verify the checksum of what follows the header, then unpickle it.

    The buffers are read one at a time as the unpickler requests them, so
    loading needs little memory beyond the state itself.
    """
    pickle_length = _count(header.get("pickle_length"), "pickle_length")
    checksum = _count(header.get("crc32"), "crc32")
    listed = header.get("buffer_lengths")
    if not isinstance(listed, list):
        raise _Unusable(f"its header has an invalid buffer_lengths: {listed!r}")
    buffer_lengths = [_count(length, "buffer length") for length in listed]
    expected_size = pickle_length + sum(buffer_lengths)
    # Checked before reading, so that a damaged length cannot ask for
    # more memory than the file holds.
    actual_size = os.fstat(file.fileno()).st_size - file.tell()
    if actual_size != expected_size:
        raise _Unusable(f"its size is wrong: {actual_size} bytes after the header, expected {expected_size}")

    data = file.read(pickle_length)
    # The checksum is checked before unpickling, so that a damaged or
    # altered file never reaches the unpickler. The buffers are read twice,
    # in chunks here, so that loading keeps one copy of each at a time.
    start = file.tell()
    crc = zlib.crc32(data)
    remaining = sum(buffer_lengths)
    while remaining:
        chunk = file.read(min(remaining, 1 << 20))
        if not chunk:
            break
        crc = zlib.crc32(chunk, crc)
        remaining -= len(chunk)
    if crc != checksum:
        raise _Unusable("its checksum does not match its content")
    file.seek(start)
    consumed = 0

    def buffers() -> Iterator[bytearray]:
        nonlocal consumed
        for length in buffer_lengths:
            chunk = bytearray(length)
            if file.readinto(chunk) != length:
                raise _Unusable("it changed while it was read")
            consumed += 1
            yield chunk

    try:
        state = unpickle_state(data, buffers(), budget=expected_size)
    except _Unusable:
        raise
    except Exception as error:  # noqa: BLE001
        # Whatever a damaged or forged pickle raises, the caller rebuilds.
        raise _Unusable(f"it cannot be unpickled: {type(error).__name__}: {error}") from None
    if consumed != len(buffer_lengths):
        raise _Unusable("its pickle does not use every buffer it lists")
    try:
        # A state whose objects lack what the code needs fails here and not
        # in the actor, where it would fail again at every restart.
        int(state.trades_seen)
        state.snapshot()
    except Exception as error:  # noqa: BLE001
        raise _Unusable(f"its state is unusable: {type(error).__name__}: {error}") from None
    return state


def load_checkpoint_sync(path: Path, expected: CheckpointKey) -> MetricsState | None:
    """Return the state stored at ``path`` if its header matches ``expected``, else None.

    Every reason to return None is logged in one line: no file, another
    database, commit, code or settings, a file cut short or damaged, or a
    global outside the state's classes.
    """
    try:
        with open(path, "rb") as file:
            header = _read_header(file)
            _check_header(header, expected)
            state = _read_payload(file, header)
    except FileNotFoundError:
        log.info("metrics: no checkpoint at %s; rebuilding from the database", path)
        return None
    except OSError as error:
        log.warning("metrics: cannot read checkpoint %s (%s); rebuilding from the database", path, error)
        return None
    except _Unusable as reason:
        level = logging.WARNING if reason.damaged else logging.INFO
        log.log(level, "metrics: checkpoint %s not used because %s; rebuilding from the database", path, reason)
        return None
    log.info("metrics: loaded checkpoint %s (commit %d, %d trades)", path, expected.seq, state.trades_seen)
    return state
