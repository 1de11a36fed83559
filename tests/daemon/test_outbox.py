"""Outbox: durable order, seq across reopen, bounds (entries, bytes, age), disk-full handling."""

from __future__ import annotations

import logging

from edgescribe.daemon.outbox import Drops, Outbox, OutboxLimits


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
    box._db.execute("PRAGMA max_page_count=1073741823")  # space freed
    box.retry_held()
    assert [e.seq for e in box.pending(0, 10)] == [1] + [e.seq for e in held]
    box.close()
    assert Outbox(tmp_path / "o.db").stats().depth == 4
