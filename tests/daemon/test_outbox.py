"""Outbox: durable order, seq across reopen, bounds (entries, bytes, age), disk-full handling
(on a real full tmpfs), damaged databases, private files."""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
import subprocess
from pathlib import Path

import pytest

from edgescribe.daemon.outbox import Drops, Outbox, OutboxLimits


class TinyDisk:
    """A real tmpfs of ``size``: fill it (``fill``) and free it again (``free``)."""

    def __init__(self, path: Path):
        self.path = path
        self.filler = path / "filler"

    def fill(self) -> None:
        descriptor = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            for chunk in (1 << 16, 1 << 12, 1 << 9, 1):
                try:
                    while True:
                        os.write(descriptor, b"\0" * chunk)
                except OSError:
                    pass
        finally:
            os.close(descriptor)

    def free(self) -> None:
        self.filler.unlink(missing_ok=True)


@pytest.fixture
def tiny_disk(tmp_path):
    """A 16 MiB tmpfs (room for SQLite's write-ahead log to grow to its checkpoint size)."""
    mount_point = tmp_path / "tiny"
    mount_point.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m,mode=0700", "tmpfs", str(mount_point)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs to fill (needs root or CAP_SYS_ADMIN): {result.stderr.strip()}")
    try:
        yield TinyDisk(mount_point)
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)


class Clock:
    def __init__(self, now: float = 1_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def put(box: Outbox, text: str):
    return box.put("t/final", lambda seq: f"{seq}:{text}".encode(), qos=1)


def test_entries_come_back_in_order_and_leave_only_when_acked(tmp_path):
    box = Outbox(tmp_path / "o.db")
    entries = [put(box, f"m{i}")[0] for i in range(5)]
    assert [e.seq for e in entries] == [1, 2, 3, 4, 5]
    assert [e.payload for e in box.pending(0, 10)] == [b"1:m0", b"2:m1", b"3:m2", b"4:m3", b"5:m4"]
    assert [e.seq for e in box.pending(entries[1].id, 2)] == [3, 4]
    box.ack(entries[0].id)
    box.ack(entries[2].id)
    box.ack(12345)  # unknown ids (dropped meanwhile) are ignored
    assert [e.seq for e in box.pending(0, 10)] == [2, 4, 5]
    assert box.stats().depth == 3


def test_unacked_entries_and_seq_survive_reopening(tmp_path):
    box = Outbox(tmp_path / "o.db")
    first, _ = put(box, "a")
    put(box, "b")
    box.ack(first.id)
    box.close()  # no clean shutdown step exists: what put() returned is already on disk
    again = Outbox(tmp_path / "o.db")
    assert [e.payload for e in again.pending(0, 10)] == [b"2:b"]
    assert put(again, "c")[0].seq == 3
    assert again.stats().next_seq == 4


def test_wal_and_full_sync_are_in_force(tmp_path):
    box = Outbox(tmp_path / "o.db")
    assert box._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert box._db.execute("PRAGMA locking_mode").fetchone()[0] == "exclusive"
    assert box._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_entry_bound_drops_the_oldest_and_counts_them(tmp_path):
    box = Outbox(tmp_path / "o.db", OutboxLimits(max_entries=3))
    drops = [put(box, f"m{i}")[1] for i in range(5)]
    assert drops == [Drops(), Drops(), Drops(), Drops(size=1), Drops(size=1)]
    assert [e.seq for e in box.pending(0, 10)] == [3, 4, 5]
    stats = box.stats()
    assert stats.depth == 3 and stats.dropped_size_total == 2
    assert box.take_unreported() == Drops(size=2) and box.take_unreported() == Drops()


def test_byte_bound_drops_enough_of_the_oldest(tmp_path):
    box = Outbox(tmp_path / "o.db", OutboxLimits(max_bytes=100))
    for _ in range(3):
        box.put("t", lambda seq: b"x" * 40)
    assert box.stats().bytes == 80
    _, drops = box.put("t", lambda seq: b"y" * 70)
    assert drops == Drops(size=2) and box.stats().bytes == 70


def test_age_bound_drops_stale_entries(tmp_path):
    clock = Clock()
    box = Outbox(tmp_path / "o.db", OutboxLimits(max_age_s=60), clock=clock)
    put(box, "old")
    clock.now += 30
    put(box, "newer")
    clock.now += 45
    assert box.expire() == Drops(age=1)
    assert [e.payload for e in box.pending(0, 10)] == [b"2:newer"]
    assert box.stats().oldest_age_s == 45
    assert box.stats().dropped_age_total == 1


def test_unreported_drops_survive_a_restart(tmp_path):
    box = Outbox(tmp_path / "o.db", OutboxLimits(max_entries=1))
    put(box, "a")
    put(box, "b")
    box.close()
    assert Outbox(tmp_path / "o.db").take_unreported() == Drops(size=1)


def test_disk_full_is_logged_once_counted_and_retried(tmp_path, caplog):
    box = Outbox(tmp_path / "o.db")
    put(box, "before")
    # A real SQLITE_FULL: cap the database at its current size, as a full disk would.
    pages = box._db.execute("PRAGMA page_count").fetchone()[0]
    box._db.execute(f"PRAGMA max_page_count={pages}")
    with caplog.at_level(logging.ERROR, logger="edgescribe.daemon.outbox"):
        held = [put(box, "x" * 5000 + str(i))[0] for i in range(3)]
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "cannot be written" in errors[0].getMessage()
    stats = box.stats()
    assert stats.write_errors >= 3 and "full" in stats.last_error
    assert stats.depth == 4  # held in memory, not lost
    assert [e.seq for e in box.pending(0, 10)] == [1]  # not sent before it is stored
    assert [e.seq for e in box.take_held(10)] == [e.seq for e in held]  # but sent anyway while the broker is up
    box._db.execute("PRAGMA max_page_count=1073741823")  # space freed
    box.retry()
    assert box.held() == 0 and box.stats().depth == 4  # stored now: a crash cannot lose them
    assert [e.seq for e in box.pending(0, 10)] == [1]  # and not handed out a second time
    box.ack(held[0].id)  # the broker's acknowledgement deletes the stored row
    assert box.stats().depth == 3
    box.close()
    assert [e.seq for e in Outbox(tmp_path / "o.db").pending(0, 10)] == [1] + [e.seq for e in held[1:]]


def fill_until_held(box: Outbox, disk: TinyDisk, limit: int = 400) -> list:
    """Fill the disk, then put until SQLite refuses (its log may still have reusable room)."""
    disk.fill()
    entries = []
    for index in range(limit):
        entries.append(put(box, f"full{index}")[0])
        if entries[-1].id < 0:
            return entries
    pytest.fail(f"{limit} writes to a full disk all succeeded")


def test_full_disk_seq_is_never_reused_and_the_loss_is_reported(tiny_disk, caplog):
    box = Outbox(tiny_disk.path / "state" / "outbox.sqlite3")
    put(box, "stored")
    entries = fill_until_held(box, tiny_disk)
    held = [e for e in entries if e.id < 0] + [put(box, "also held")[0]]
    assert all(e.id < 0 for e in held)
    with caplog.at_level(logging.ERROR, logger="edgescribe.daemon.outbox"):
        lost = box.close()  # the disk is still full and nothing was delivered
    assert [e.seq for e in lost] == [e.seq for e in held]
    assert any("could neither be stored nor delivered" in r.getMessage() and f"seq {held[0].seq}" in r.getMessage()
               for r in caplog.records)
    again = Outbox(tiny_disk.path / "state" / "outbox.sqlite3")
    assert again.stats().next_seq == held[-1].seq + 1  # never reused, even though none of them was stored
    assert again.take_unreported() == Drops(unstored=len(held))
    assert again.take_unreported() == Drops()  # reported once
    again.close()


def test_full_disk_entries_held_then_stored_when_space_returns(tiny_disk, caplog):
    box = Outbox(tiny_disk.path / "state" / "outbox.sqlite3")
    entries = fill_until_held(box, tiny_disk)
    assert box.stats().last_error and "full" in box.stats().last_error
    tiny_disk.free()
    with caplog.at_level(logging.INFO, logger="edgescribe.daemon.outbox"):
        box.retry()
    recovered = [r for r in caplog.records if "writable again" in r.getMessage()]
    assert recovered and all(r.levelno == logging.INFO for r in recovered)
    stats = box.stats()
    assert stats.last_error is None and stats.depth == len(entries)
    assert [e.seq for e in box.pending(0, 1000)] == [e.seq for e in entries]
    assert box.close() == []


def test_acks_on_a_full_disk_are_not_resent_and_their_deletes_are_retried(tiny_disk):
    box = Outbox(tiny_disk.path / "state" / "outbox.sqlite3")
    stored = [put(box, f"m{i}")[0] for i in range(5)]
    fill_until_held(box, tiny_disk)
    for entry in stored:
        box.ack(entry.id)  # the broker acknowledged them while the disk is full
    assert not [e for e in box.pending(0, 100) if e.id in {s.id for s in stored}]  # not handed out again
    assert box.stats().depth == len([e for e in box._held.values()]) + len(box.pending(0, 1000))
    tiny_disk.free()
    box.retry()
    box.close()
    again = Outbox(tiny_disk.path / "state" / "outbox.sqlite3")
    resent = {e.seq for e in again.pending(0, 1000)} & {e.seq for e in stored}
    assert not resent, f"acknowledged messages would be sent again after a restart: {sorted(resent)}"
    again.close()


def damaged_outboxes():
    def random_bytes(path: Path) -> None:
        path.write_bytes(os.urandom(8192))

    def truncated(path: Path) -> None:
        box = Outbox(path)
        for index in range(300):
            put(box, f"message {index} " + "x" * 200)
        box.close()
        data = path.read_bytes()
        for side in ("-wal", "-shm"):
            Path(str(path) + side).unlink(missing_ok=True)
        path.write_bytes(data[: len(data) // 2])

    def other_layout(path: Path) -> None:
        db = sqlite3.connect(path)
        db.executescript("CREATE TABLE outbox (id INTEGER PRIMARY KEY, seq INTEGER, topic TEXT, payload BLOB);"
                         "INSERT INTO outbox (seq, topic, payload) VALUES (7, 't/final', x'6869');"
                         "INSERT INTO outbox (seq, topic, payload) VALUES (8, 't/final', x'7468657265');")
        db.commit()
        db.close()

    return [random_bytes, truncated, other_layout]


@pytest.mark.parametrize("damage", damaged_outboxes(), ids=lambda f: f.__name__)
def test_a_damaged_outbox_is_moved_aside_and_what_can_be_read_is_kept(tmp_path, damage, caplog):
    path = tmp_path / "outbox.sqlite3"
    damage(path)
    with caplog.at_level(logging.ERROR, logger="edgescribe.daemon.outbox"):
        box = Outbox(path)
    assert box.damage is not None and box.damage.moved_to.exists()
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(lines) == 1 and str(box.damage.moved_to) in lines[0]
    recovered = box.pending(0, 1000)
    assert len(recovered) == box.damage.recovered
    if damage.__name__ == "other_layout":
        assert [(e.seq, e.payload) for e in recovered] == [(7, b"hi"), (8, b"there")]
    if damage.__name__ == "truncated":
        assert 0 < len(recovered) < 300  # the rows before the cut are kept
    assert put(box, "after")[0].seq > max([e.seq for e in recovered], default=0)  # seq goes on above them
    box.close()
    assert Outbox(path).damage is None  # the fresh outbox is healthy


def test_state_files_are_private_whatever_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        box = Outbox(tmp_path / "state" / "outbox.sqlite3")
        put(box, "secret words")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "state").stat().st_mode) == 0o700
    files = sorted((tmp_path / "state").iterdir())
    assert {f.name for f in files} >= {"outbox.sqlite3", "outbox.sqlite3-wal"}
    assert {f.name: stat.S_IMODE(f.stat().st_mode) for f in files} == {f.name: 0o600 for f in files}
    box.close()


def test_a_restart_on_a_full_disk_opens_the_outbox_and_continues_the_seq(tiny_disk):
    path = tiny_disk.path / "state" / "outbox.sqlite3"
    box = Outbox(path)
    put(box, "stored")
    held = fill_until_held(box, tiny_disk)[-1]
    box.close()
    again = Outbox(path)  # still full
    assert again.damage is None
    assert put(again, "next")[0].seq == held.seq + 1
    again.close()
