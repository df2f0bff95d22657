"""The checkpoint of the metrics state: used only when valid, never harmful.

Every database here is a real SQLite file in ``tmp_path``, written by the
logger's ``write_batch``, and every checkpoint a real file beside it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pickle
import shutil
from array import array
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import trio
from helpers import BASE_TIME, cancelled, decision, opened, resolved

import actors.analytics.checkpoint as checkpoint_module
import actors.metrics as metrics_module
from actors.analytics.checkpoint import (
    MAGIC,
    CheckpointKey,
    checkpoint_path,
    code_fingerprint,
    load_checkpoint_sync,
    pickle_state,
    unpickle_state,
    write_checkpoint_sync,
)
from actors.analytics.settings import MetricsSettings
from actors.analytics.state import MetricsState
from actors.archiver import archive_once
from actors.logger import Committed, write_batch
from actors.messages import Message
from actors.metrics import load_state_sync, restore_state_sync, run_metrics
from actors.store import open_database, prepare_archive_sync, read_identity_sync
from actors.trades import apply_trade_message
from supervisor.config import MetricsConfig
from supervisor.mailbox import Backlog

SETTINGS = MetricsSettings.from_config(
    MetricsConfig(starting_balance=1000.0, timezone="America/New_York", top_rows=2)
)

MARKETS = ["m-a", "m-b", "m-c"]


def history(count: int) -> list[Message]:
    """Return openings, resolutions, cancellations and HOLDs over several days and markets."""
    messages: list[Message] = []
    for index in range(count):
        market = MARKETS[index % len(MARKETS)]
        minute = index * 97
        messages.append(
            opened(
                f"t{index}", minute=minute, market=market, side="yes" if index % 2 else "no",
                probability="0.6", tags=["news"] if index % 3 else [], entry_price="0.4",
            )
        )
        if index % 7 == 6:
            messages.append(cancelled(f"t{index}", minute=minute + 5))
        elif index % 5:
            pnl = "6" if index % 3 else "-4"
            messages.append(resolved(f"t{index}", pnl, minute=minute + 30, exit_price="1" if index % 3 else "0"))
        if index % 4 == 0:
            messages.append(
                decision("hold", minute=minute, market=market, side="yes", params={"price": 0.3, "size": 5})
            )
    return messages


async def store(database: Path, archive: Path, messages: list[Message]) -> int:
    """Write ``messages`` in batches of 20 as the logger does; return the last commit's number."""
    prepare_archive_sync(archive)
    connection = await open_database(database, archive)
    seq = 0
    try:
        for start in range(0, len(messages), 20):
            seq = (await write_batch(connection, messages[start : start + 20])).seq
    finally:
        await connection.close()
    return seq


def comparable(state: MetricsState) -> dict[str, Any]:
    document = state.snapshot()
    document.pop("generated_at")
    return document


def write_current(database: Path, archive: Path, state: MetricsState, seq: int) -> Path:
    """Write ``state`` as the checkpoint of commit ``seq`` under the running code and settings."""
    identity = read_identity_sync(database, archive)
    key = CheckpointKey.current(identity, SETTINGS)
    assert key is not None
    pickled = pickle_state(state)
    path = checkpoint_path(database)
    try:
        assert write_checkpoint_sync(path, dataclasses.replace(key, seq=seq), pickled)
    finally:
        pickled.release()
    return path


def current_key(database: Path, archive: Path, settings: MetricsSettings = SETTINGS) -> CheckpointKey:
    key = CheckpointKey.current(read_identity_sync(database, archive), settings)
    assert key is not None
    return key


@pytest.fixture
async def stored(tmp_path: Path) -> tuple[Path, Path, int]:
    """A database and an archive with 60 trades of every kind, and its latest commit."""
    database, archive = tmp_path / "t.sqlite", tmp_path / "a.sqlite"
    seq = await store(database, archive, history(60))
    return database, archive, seq


async def test_round_trip_equals_original(stored: tuple[Path, Path, int]) -> None:
    database, archive, seq = stored
    _, original = load_state_sync(database, archive, SETTINGS)
    path = write_current(database, archive, original, seq)

    loaded = load_checkpoint_sync(path, current_key(database, archive))

    assert loaded is not None
    assert comparable(loaded) == comparable(original)
    # The loaded state goes on exactly as the original: a new trade and a
    # correction of an old one give the same document in both.
    first = apply_trade_message(None, opened("new", minute=99_000, market="m-b"))
    for state in (original, loaded):
        state.apply_change(None, first)
        state.apply_change(
            apply_trade_message(None, resolved("t1", "6", minute=127, exit_price="1")),
            apply_trade_message(None, resolved("t1", "-2", minute=127, exit_price="0")),
        )
    assert comparable(loaded) == comparable(original)


async def test_file_is_private(stored: tuple[Path, Path, int]) -> None:
    database, archive, seq = stored
    _, state = load_state_sync(database, archive, SETTINGS)
    path = write_current(database, archive, state, seq)
    assert path == database.with_name("t.sqlite.metrics-checkpoint")
    assert path.stat().st_mode & 0o777 == 0o600
    assert not path.with_name(path.name + ".tmp").exists()


async def test_stale_sequence_not_used(
    stored: tuple[Path, Path, int], caplog: pytest.LogCaptureFixture
) -> None:
    database, archive, seq = stored
    _, before = load_state_sync(database, archive, SETTINGS)
    write_current(database, archive, before, seq)
    # Later commits correct a resolved trade, cancel an open one and add one.
    later = [resolved("t1", "-50", minute=200), cancelled("t0"), opened("late", minute=9000)]
    await store(database, archive, later)

    with caplog.at_level(logging.INFO):
        restored = restore_state_sync(database, archive, SETTINGS)

    assert not restored.from_checkpoint
    assert restored.seq == seq + 1
    assert f"reflects commit {seq} and the database is at commit {seq + 1}" in caplog.text
    _, rebuilt = load_state_sync(database, archive, SETTINGS)
    assert comparable(restored.state) == comparable(rebuilt)
    assert comparable(restored.state) != comparable(before)


async def test_valid_checkpoint_used(
    stored: tuple[Path, Path, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    database, archive, seq = stored
    _, original = load_state_sync(database, archive, SETTINGS)
    write_current(database, archive, original, seq)

    def no_rebuild(*args: Any) -> Any:
        raise AssertionError("rebuilt from the database despite a valid checkpoint")

    monkeypatch.setattr(metrics_module, "_rebuild_sync", no_rebuild)
    restored = restore_state_sync(database, archive, SETTINGS)

    assert restored.from_checkpoint
    assert restored.seq == seq
    assert comparable(restored.state) == comparable(original)


async def test_archive_move_keeps_it_valid(stored: tuple[Path, Path, int]) -> None:
    database, archive, seq = stored
    _, original = load_state_sync(database, archive, SETTINGS)
    write_current(database, archive, original, seq)
    connection = await open_database(database, archive)
    moved = await archive_once(connection, 1.0, 10, BASE_TIME + timedelta(days=30))
    await connection.close()

    restored = restore_state_sync(database, archive, SETTINGS)

    assert moved > 0
    assert restored.from_checkpoint
    _, rebuilt = load_state_sync(database, archive, SETTINGS)
    assert comparable(restored.state) == comparable(rebuilt)


@pytest.mark.parametrize(
    "changed",
    [{"starting_balance": 2000.0}, {"timezone": "UTC"}, {"break_even_tolerance": 0.5}, {"top_rows": 3}],
)
async def test_other_settings_not_used(
    stored: tuple[Path, Path, int], changed: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    database, archive, seq = stored
    _, state = load_state_sync(database, archive, SETTINGS)
    path = write_current(database, archive, state, seq)
    config = {"starting_balance": 1000.0, "timezone": "America/New_York", "top_rows": 2, **changed}
    other = MetricsSettings.from_config(MetricsConfig(**config))

    with caplog.at_level(logging.INFO):
        loaded = load_checkpoint_sync(path, current_key(database, archive, other))

    assert loaded is None
    assert "the metrics settings changed" in caplog.text


async def test_other_code_not_used(
    stored: tuple[Path, Path, int], caplog: pytest.LogCaptureFixture
) -> None:
    database, archive, seq = stored
    _, state = load_state_sync(database, archive, SETTINGS)
    path = write_current(database, archive, state, seq)
    expected = dataclasses.replace(current_key(database, archive), code="0" * 64)

    with caplog.at_level(logging.INFO):
        loaded = load_checkpoint_sync(path, expected)

    assert loaded is None
    assert "the metrics code or the Python version changed" in caplog.text


def test_code_fingerprint_follows_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = checkpoint_module._PACKAGE_ROOT
    for pattern in checkpoint_module.CODE_FILES:
        for source in root.glob(pattern):
            target = tmp_path / source.relative_to(root)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
    monkeypatch.setattr(checkpoint_module, "_PACKAGE_ROOT", tmp_path)
    compute = code_fingerprint.__wrapped__

    before = compute()
    stats = tmp_path / "actors" / "analytics" / "stats.py"
    stats.write_text(stats.read_text() + "\n# changed\n")
    after = compute()
    (tmp_path / "actors" / "trades.py").unlink()
    without_source = compute()

    assert before == code_fingerprint()
    assert after != before
    assert without_source is None


async def test_new_database_not_used(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    database, archive = tmp_path / "t.sqlite", tmp_path / "a.sqlite"
    messages = history(10)
    seq = await store(database, archive, messages)
    _, state = load_state_sync(database, archive, SETTINGS)
    path = write_current(database, archive, state, seq)
    saved = path.read_bytes()
    # A new database at the same path reaching the same commit number.
    for file in tmp_path.glob("t.sqlite*"):
        file.unlink()
    assert await store(database, archive, list(reversed(messages))) == seq
    path.write_bytes(saved)

    with caplog.at_level(logging.INFO):
        restored = restore_state_sync(database, archive, SETTINGS)

    assert not restored.from_checkpoint
    assert "written for another database file" in caplog.text


def corrupt_cases(size: int, payload_start: int) -> list[tuple[str, Any]]:
    """Return ways to damage a checkpoint file of ``size`` bytes, each with a name."""

    def cut(length: int) -> Any:
        return lambda data: data[:length]

    def flip(offset: int) -> Any:
        return lambda data: data[:offset] + bytes([data[offset] ^ 0xFF]) + data[offset + 1 :]

    return [
        ("empty", cut(0)),
        ("magic only", cut(len(MAGIC))),
        ("half header", cut(payload_start // 2)),
        ("header only", cut(payload_start)),
        ("half payload", cut((payload_start + size) // 2)),
        ("last byte missing", cut(size - 1)),
        ("byte flipped in the magic", flip(0)),
        ("byte flipped in the payload", flip(payload_start + 10)),
        ("byte flipped at the end", flip(size - 1)),
        ("byte appended", lambda data: data + b"\0"),
    ]


async def test_damaged_file_not_used(
    stored: tuple[Path, Path, int], caplog: pytest.LogCaptureFixture
) -> None:
    database, archive, seq = stored
    _, state = load_state_sync(database, archive, SETTINGS)
    path = write_current(database, archive, state, seq)
    original = path.read_bytes()
    header_length = int.from_bytes(original[len(MAGIC) : len(MAGIC) + 4], "big")
    payload_start = len(MAGIC) + 4 + header_length
    key = current_key(database, archive)

    for name, damage in corrupt_cases(len(original), payload_start):
        path.write_bytes(damage(original))
        caplog.clear()
        with caplog.at_level(logging.INFO):
            loaded = load_checkpoint_sync(path, key)
        assert loaded is None, name
        assert "not used because" in caplog.text, name

    path.write_bytes(original)
    assert load_checkpoint_sync(path, key) is not None


class _Exploit:
    """Pickles as a call of os.system that would create ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return os.system, (f"touch {self.marker}",)


def forge(path: Path, key: CheckpointKey, data: bytes) -> None:
    """Write ``data`` as the pickle of a checkpoint with a valid header and checksum."""
    pickled = checkpoint_module.PickledState(data, [], 0)
    assert write_checkpoint_sync(path, key, pickled)


async def test_forbidden_class_refused(
    stored: tuple[Path, Path, int], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    database, archive, _ = stored
    marker = tmp_path / "exploited"
    path = checkpoint_path(database)
    key = current_key(database, archive)
    forge(path, key, pickle.dumps(_Exploit(marker), protocol=5))

    with caplog.at_level(logging.INFO):
        loaded = load_checkpoint_sync(path, key)

    assert loaded is None
    assert not marker.exists()
    assert f"{os.system.__module__}.system is not part of the metrics state" in caplog.text


@pytest.mark.parametrize(
    "forbidden",
    [
        ("builtins", "getattr"),
        ("builtins", "eval"),
        ("os", "system"),
        ("actors.analytics.state", "json"),
        ("actors.analytics.state", "facts_from_row"),
        ("actors.analytics.checkpoint", "write_checkpoint_sync"),
        ("subprocess", "Popen"),
    ],
)
def test_unpickler_rejects_globals(forbidden: tuple[str, str]) -> None:
    module, name = forbidden
    # GLOBAL, then STOP: naming the global is enough to be rejected.
    data = b"c" + module.encode() + b"\n" + name.encode() + b"\n."
    with pytest.raises(pickle.UnpicklingError, match="is not part of the metrics state"):
        unpickle_state(data, [])


def test_unpickler_needs_a_state() -> None:
    with pytest.raises(pickle.UnpicklingError, match="not a MetricsState"):
        unpickle_state(pickle.dumps({"trades": 1}, protocol=5), [])


async def test_other_object_not_used(
    stored: tuple[Path, Path, int], caplog: pytest.LogCaptureFixture
) -> None:
    database, archive, _ = stored
    path = checkpoint_path(database)
    key = current_key(database, archive)
    forge(path, key, pickle.dumps([1, 2, 3], protocol=5))

    with caplog.at_level(logging.INFO):
        loaded = load_checkpoint_sync(path, key)

    assert loaded is None
    assert "not a MetricsState" in caplog.text


@pytest.mark.parametrize("blocker", ["folder missing", "temporary path is a folder", "folder is a file"])
def test_write_failure_logged(tmp_path: Path, blocker: str, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "data" / "t.sqlite.metrics-checkpoint"
    if blocker == "temporary path is a folder":
        path.with_name(path.name + ".tmp").mkdir(parents=True)
    elif blocker == "folder is a file":
        # Unlike a read-only folder, this fails for root too.
        path.parent.write_text("not a folder")
    pickled = pickle_state(MetricsState(SETTINGS))
    key = CheckpointKey(1, "id", None, "code", "settings")

    with caplog.at_level(logging.ERROR):
        written = write_checkpoint_sync(path, key, pickled)

    assert written is False
    assert not path.exists()
    errors = [record for record in caplog.records if record.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "cannot write checkpoint" in errors[0].getMessage()


def trade_count(document: dict[str, Any]) -> int:
    return int(document["open"] + document["resolved"] + document["cancelled"])


async def run_until_published(
    config: MetricsConfig, database: Path, archive: Path, later: list[Message] | None = None
) -> dict[str, Any]:
    """Start the actor, then commit ``later`` and pass it on; stop once it is published."""
    published: list[dict[str, Any]] = []
    inbox: Backlog[Committed] = Backlog("metrics")
    async with trio.open_nursery() as nursery:
        await nursery.start(run_metrics, config, inbox, database, archive, published.append)
        with trio.fail_after(30):
            while not published:
                await trio.sleep(0.01)
            if later:
                connection = await open_database(database, archive)
                committed = await write_batch(connection, later)
                await connection.close()
                inbox.put(committed)
                expected = trade_count(published[-1]) + len(later)
                while trade_count(published[-1]) != expected:
                    await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    return published[-1]


def header_of(path: Path) -> dict[str, Any]:
    data = path.read_bytes()
    length = int.from_bytes(data[len(MAGIC) : len(MAGIC) + 4], "big")
    header: dict[str, Any] = json.loads(data[len(MAGIC) + 4 : len(MAGIC) + 4 + length])
    return header


# The tests below run the actor on the real clock: the checkpoint is written
# in a worker thread, which a mock clock counts as idle time and jumps past.


async def test_actor_writes_at_stop_and_loads(
    stored: tuple[Path, Path, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    database, archive, seq = stored
    config = MetricsConfig(
        publish_interval=0.0, starting_balance=1000.0, timezone="America/New_York", top_rows=2,
        checkpoint_interval=0.0,
    )
    # One more trade reaches the actor as a commit after its rebuild.
    first = await run_until_published(config, database, archive, [opened("late", minute=9000)])
    path = checkpoint_path(database)
    header = header_of(path)

    def no_rebuild(*args: Any) -> Any:
        raise AssertionError("rebuilt from the database despite a valid checkpoint")

    monkeypatch.setattr(metrics_module, "_rebuild_sync", no_rebuild)
    second = await run_until_published(config, database, archive)

    assert header["seq"] == seq + 1
    assert header["trades"] == 61
    first.pop("generated_at")
    second.pop("generated_at")
    assert second == first


async def test_actor_writes_when_idle(
    stored: tuple[Path, Path, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    database, archive, seq = stored
    monkeypatch.setattr(metrics_module, "CHECKPOINT_QUIET", 0.01)
    config = MetricsConfig(publish_interval=0.0, checkpoint_interval=0.05)
    path = checkpoint_path(database)
    connection = await open_database(database, archive)
    inbox: Backlog[Committed] = Backlog("metrics")
    async with trio.open_nursery() as nursery:
        await nursery.start(run_metrics, config, inbox, database, archive, lambda document: None)
        # Written once the rebuild is done and no commit arrives.
        with trio.fail_after(30):
            while not path.exists() or header_of(path)["seq"] != seq:
                await trio.sleep(0.01)
        inbox.put(await write_batch(connection, [opened("late", minute=9000)]))
        with trio.fail_after(30):
            while header_of(path)["seq"] != seq + 1:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    await connection.close()
    assert header_of(path)["trades"] == 61


async def test_actor_survives_unwritable_checkpoint(
    stored: tuple[Path, Path, int], caplog: pytest.LogCaptureFixture
) -> None:
    database, archive, _ = stored
    path = checkpoint_path(database)
    # A folder where the files go: neither the checkpoint nor its temporary file can be written.
    path.mkdir()
    path.with_name(path.name + ".tmp").mkdir()
    config = MetricsConfig(publish_interval=0.0, checkpoint_interval=0.0)

    with caplog.at_level(logging.INFO):
        document = await run_until_published(config, database, archive)

    assert trade_count(document) == 60
    assert "cannot read checkpoint" in caplog.text
    assert "cannot write checkpoint" in caplog.text


async def test_rebuild_reads_exact_microseconds(tmp_path: Path) -> None:
    database, archive = tmp_path / "t.sqlite", tmp_path / "a.sqlite"
    # SQLite rounds a parsed time to milliseconds; .9995 s and later must not
    # become the next second.
    base = BASE_TIME.isoformat().replace("+00:00", "")
    messages = [
        opened("a"),
        resolved("a", "1", resolved_at=f"{base[:-3]}:59.999999Z"),
        opened("b"),
        resolved("b", "-1", resolved_at=f"{base[:-3]}:59.999500Z"),
    ]
    await store(database, archive, messages)
    live = MetricsState(SETTINGS)
    records: dict[str, Any] = {}
    for message in messages:
        before = records.get(message.trade_id)
        records[message.trade_id] = apply_trade_message(before, message)
        live.apply_change(before, records[message.trade_id])

    _, rebuilt = load_state_sync(database, archive, SETTINGS)

    assert list(rebuilt.series.times) == list(live.series.times)
    assert comparable(rebuilt) == comparable(live)


def test_pickle_leaves_arrays_out_of_band() -> None:
    state = MetricsState(SETTINGS)
    for index in range(3):
        record = apply_trade_message(None, resolved(f"t{index}", "1", minute=index))
        state.apply_change(None, record)
    later = apply_trade_message(None, resolved("later", "2", minute=10))
    pickled = pickle_state(state)
    try:
        # The eight columns of the series travel beside the pickle, by
        # reference: seven of 8-byte values and the 1-byte outcomes.
        assert len(pickled.buffers) >= 8
        assert pickled.size - len(pickled.data) == 7 * 3 * 8 + 3
        # The series cannot grow while its arrays are lent to the writer.
        with pytest.raises(BufferError):
            state.series.times.append(0)
    finally:
        pickled.release()
    state.apply_change(None, later)
    assert len(state.series) == 4


def test_rebuilt_array_frees_its_buffer() -> None:
    # The unpickler's memo keeps each buffer until the load ends, so the
    # copy is dropped as soon as the array has its own.
    buffer = bytearray(array("q", [1, -2, 3]).tobytes())
    values = checkpoint_module._rebuild_array("q", buffer)
    assert list(values) == [1, -2, 3]
    assert len(buffer) == 0


async def test_restored_archive_backup_not_used(stored: tuple[Path, Path, int], tmp_path: Path) -> None:
    database, archive, seq = stored
    backup = tmp_path / "archive-backup.sqlite"
    shutil.copyfile(archive, backup)
    connection = await open_database(database, archive)
    moved = await archive_once(connection, 1.0, 10, BASE_TIME + timedelta(days=30))
    await connection.close()
    _, original = load_state_sync(database, archive, SETTINGS)
    write_current(database, archive, original, seq)
    # Archiving keeps the commit number, so only the trade count differs.
    shutil.copyfile(backup, archive)

    restored = restore_state_sync(database, archive, SETTINGS)

    assert moved > 0
    assert not restored.from_checkpoint
    _, rebuilt = load_state_sync(database, archive, SETTINGS)
    assert comparable(restored.state) == comparable(rebuilt)


async def test_hollow_state_not_used(
    stored: tuple[Path, Path, int], caplog: pytest.LogCaptureFixture
) -> None:
    database, archive, _ = stored
    # A MetricsState made without __init__: it has none of its attributes.
    hollow = b"\x80\x02cactors.analytics.state\nMetricsState\n)\x81}b."
    forge(checkpoint_path(database), current_key(database, archive), hollow)

    with caplog.at_level(logging.WARNING):
        restored = restore_state_sync(database, archive, SETTINGS)

    assert not restored.from_checkpoint
    assert "its state is unusable" in caplog.text


def test_bytearray_global_refused() -> None:
    # A bytearray of 2e9 bytes, which would take 2 GB before any check.
    bomb = b"\x80\x02cbuiltins\nbytearray\nJ\x00\x94\x35\x77\x85R."
    with pytest.raises(pickle.UnpicklingError, match="builtins.bytearray is not part"):
        unpickle_state(bomb, [])


class _Amplifier:
    """Pickles as an array rebuilt from a buffer that the pickle memoizes once."""

    payload = b"x" * 100_000

    def __reduce__(self) -> tuple[Any, ...]:
        return checkpoint_module._rebuild_array, ("b", self.payload)


def test_array_amplification_refused() -> None:
    # 50 arrays of 100 kB from one memoized buffer, in a pickle of about 100 kB.
    data = pickle.dumps([_Amplifier() for _ in range(50)], protocol=5)
    with pytest.raises(pickle.UnpicklingError, match="more bytes than the file contains"):
        unpickle_state(data, [])


async def test_checksum_checked_before_unpickling(
    stored: tuple[Path, Path, int], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    database, archive, _ = stored
    path = checkpoint_path(database)
    key = current_key(database, archive)
    forge(path, key, pickle.dumps(_Exploit(tmp_path / "exploited"), protocol=5))
    data = path.read_bytes()
    path.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))

    with caplog.at_level(logging.INFO):
        loaded = load_checkpoint_sync(path, key)

    assert loaded is None
    assert "checksum does not match" in caplog.text
    assert "is not part of the metrics state" not in caplog.text
