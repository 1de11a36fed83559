"""Durable store-and-forward queue for outbound MQTT messages (SQLite, WAL).

A message is written here before it is handed to the MQTT client and deleted only when
the broker acknowledges it, so a broker outage, SIGKILL or power cut loses nothing that
``put`` returned for. The device-wide sequence number lives in the same database and is
assigned in the same transaction as the row, so it keeps increasing across restarts.

Why ``synchronous=FULL``: in WAL mode NORMAL may lose the last commits on power loss;
transcripts arrive a few per second at most, so an fsync per message is cheap.

When SQLite cannot write (disk full, read-only media) the message is held in memory
(bounded by the same entry limit) and written as soon as the disk accepts it again; the
failure is logged once per episode and counted, never raised into the pipeline.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    seq INTEGER NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    retain INTEGER NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


@dataclass(frozen=True)
class OutboxLimits:
    max_entries: int = 100_000
    max_bytes: int = 64 * 1024 * 1024
    max_age_s: float = 7 * 24 * 3600.0


@dataclass(frozen=True)
class OutboxEntry:
    id: int  # row id, increasing; 0 while held in memory during a disk failure
    seq: int
    topic: str
    payload: bytes
    qos: int
    retain: bool
    created: float


@dataclass(frozen=True)
class Drops:
    """Entries removed to respect the bounds by one operation."""

    size: int = 0
    age: int = 0

    def __bool__(self) -> bool:
        return bool(self.size or self.age)


@dataclass(frozen=True)
class OutboxStats:
    depth: int
    bytes: int
    oldest_age_s: Optional[float]
    dropped_size_total: int
    dropped_age_total: int
    write_errors: int
    last_error: Optional[str]
    next_seq: int


class Outbox:
    """Thread-safe; one SQLite connection guarded by a lock (writes are serialised anyway)."""

    def __init__(self, path: Path, limits: OutboxLimits = OutboxLimits(), clock: Callable[[], float] = time.time):
        self.path = Path(path)
        self.limits = limits
        self._clock = clock
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None, timeout=5.0)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._next_seq = self._meta("next_seq", 1)
        self._dropped_size = self._meta("dropped_size", 0)
        self._dropped_age = self._meta("dropped_age", 0)
        self._unreported = Drops(self._meta("unreported_size", 0), self._meta("unreported_age", 0))
        self._memory: deque[OutboxEntry] = deque()  # written-but-not-durable during a disk failure
        self._write_errors = 0
        self._last_error: Optional[str] = None
        self._failing = False
        depth, size = self._db.execute("SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM outbox").fetchone()
        self._depth, self._bytes = depth, size
        if depth:
            log.info("outbox %s holds %d unsent messages from a previous run", self.path, depth)

    # -- writing ------------------------------------------------------------------

    def put(self, topic: str, build_payload: Callable[[int], bytes], qos: int = 1, retain: bool = False
            ) -> tuple[OutboxEntry, Drops]:
        """Assign the next sequence number, build the payload with it, store it durably.

        Returns the entry and the entries dropped (oldest first) to stay within bounds.
        """
        with self._lock:
            seq = self._next_seq
            self._next_seq += 1
            now = self._clock()
            payload = build_payload(seq)
            entry = OutboxEntry(0, seq, topic, payload, qos, retain, now)
            self._flush_memory()
            drops = Drops()
            if self._memory:  # disk still failing: keep order by queueing behind what's in memory
                entry = self._hold_in_memory(entry)
            else:
                try:
                    drops = self._make_room(1, len(payload), now)
                    entry = self._insert(entry)
                except sqlite3.Error as error:
                    self._note_failure(error)
                    entry = self._hold_in_memory(entry)
            if self._memory:
                drops = Drops(drops.size + self._bound_memory(), drops.age)
            return entry, drops

    def _insert(self, entry: OutboxEntry) -> OutboxEntry:
        with self._transaction():
            cursor = self._db.execute(
                "INSERT INTO outbox (seq, topic, payload, qos, retain, created) VALUES (?, ?, ?, ?, ?, ?)",
                (entry.seq, entry.topic, entry.payload, entry.qos, int(entry.retain), entry.created),
            )
            self._set_meta("next_seq", entry.seq + 1)
        self._depth += 1
        self._bytes += len(entry.payload)
        if self._failing:
            log.warning("outbox %s is writable again", self.path)
            self._failing = False
        return OutboxEntry(cursor.lastrowid, entry.seq, entry.topic, entry.payload, entry.qos, entry.retain,
                           entry.created)

    def _hold_in_memory(self, entry: OutboxEntry) -> OutboxEntry:
        self._memory.append(entry)
        return entry

    def _bound_memory(self) -> int:
        # Oldest held entries go first, as on disk; the count joins the size drops.
        dropped = 0
        while len(self._memory) + self._depth > self.limits.max_entries and self._memory:
            self._memory.popleft()
            dropped += 1
        if dropped:
            self._count_drops(Drops(size=dropped))
        return dropped

    def _flush_memory(self) -> None:
        """Write entries held during a disk failure into the database, oldest first."""
        while self._memory:
            held = self._memory[0]
            try:
                self._make_room(1, len(held.payload), self._clock())
                self._insert(held)
            except sqlite3.Error as error:
                self._note_failure(error)
                return
            self._memory.popleft()

    def _note_failure(self, error: sqlite3.Error) -> None:
        self._write_errors += 1
        self._last_error = f"{type(error).__name__}: {error}"
        if not self._failing:
            log.error("outbox %s cannot be written (%s); holding messages in memory and retrying", self.path, error)
            self._failing = True

    def _make_room(self, incoming: int, incoming_bytes: int, now: float) -> Drops:
        age = self._delete_where("created < ?", (now - self.limits.max_age_s,))
        size = 0
        while self._depth > 0 and (self._depth + incoming > self.limits.max_entries
                                   or self._bytes + incoming_bytes > self.limits.max_bytes):
            excess = max(1, self._depth + incoming - self.limits.max_entries)
            size += self._delete_where("id IN (SELECT id FROM outbox ORDER BY id LIMIT ?)", (excess,))
        if age or size:
            self._count_drops(Drops(size=size, age=age))
        return Drops(size=size, age=age)

    def _count_drops(self, drops: Drops) -> None:
        # Totals for health, and "not yet reported" so a restart still reports drops made before it.
        self._dropped_age += drops.age
        self._dropped_size += drops.size
        self._unreported = Drops(self._unreported.size + drops.size, self._unreported.age + drops.age)
        try:
            with self._transaction():
                self._set_meta("dropped_age", self._dropped_age)
                self._set_meta("dropped_size", self._dropped_size)
                self._set_meta("unreported_size", self._unreported.size)
                self._set_meta("unreported_age", self._unreported.age)
        except sqlite3.Error as error:
            self._note_failure(error)

    def take_unreported(self) -> Drops:
        """Drops not yet reported as an OutboxDropEvent (persisted across restarts); resets them."""
        with self._lock:
            drops, self._unreported = self._unreported, Drops()
            if drops:
                try:
                    with self._transaction():
                        self._set_meta("unreported_size", 0)
                        self._set_meta("unreported_age", 0)
                except sqlite3.Error as error:
                    self._note_failure(error)
            return drops

    def _delete_where(self, where: str, args: tuple) -> int:
        with self._transaction():
            count, size = self._db.execute(
                f"SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM outbox WHERE {where}", args).fetchone()
            if count:
                self._db.execute(f"DELETE FROM outbox WHERE {where}", args)
        self._depth -= count
        self._bytes -= size
        return count

    def expire(self) -> Drops:
        """Drop entries older than the age bound (called periodically by the sender)."""
        with self._lock:
            self._flush_memory()
            try:
                return self._make_room(0, 0, self._clock()) if self._depth else Drops()
            except sqlite3.Error as error:
                self._note_failure(error)
                return Drops()

    # -- reading and acknowledging ---------------------------------------------------

    def pending(self, after_id: int, limit: int) -> list[OutboxEntry]:
        """Stored entries with id > after_id, oldest first.

        Entries held in memory during a disk failure are not returned: they are sent once
        written, which keeps "stored before sent" true. Acknowledged sends free pages in
        the database file, so a full disk still drains and then accepts the held entries.
        """
        with self._lock:
            rows = self._db.execute(
                "SELECT id, seq, topic, payload, qos, retain, created FROM outbox WHERE id > ? ORDER BY id LIMIT ?",
                (after_id, limit),
            ).fetchall()
            return [OutboxEntry(r[0], r[1], r[2], bytes(r[3]), r[4], bool(r[5]), r[6]) for r in rows]

    def ack(self, entry_id: int) -> None:
        """The broker acknowledged the entry: delete it. Unknown ids (already dropped) are ignored."""
        with self._lock:
            try:
                self._delete_where("id = ?", (entry_id,))
            except sqlite3.Error as error:
                # The row stays and is re-sent after a restart; consumers de-duplicate by seq.
                self._note_failure(error)

    def retry_held(self) -> None:
        """Try again to write entries held in memory (called periodically by the sender)."""
        with self._lock:
            if self._memory:
                self._flush_memory()

    def stats(self) -> OutboxStats:
        with self._lock:
            oldest = None
            if self._memory:
                oldest = self._memory[0].created
            if self._depth:
                row = self._db.execute("SELECT MIN(created) FROM outbox").fetchone()
                oldest = row[0] if oldest is None else min(oldest, row[0])
            return OutboxStats(
                depth=self._depth + len(self._memory),
                bytes=self._bytes + sum(len(e.payload) for e in self._memory),
                oldest_age_s=None if oldest is None else max(0.0, self._clock() - oldest),
                dropped_size_total=self._dropped_size,
                dropped_age_total=self._dropped_age,
                write_errors=self._write_errors,
                last_error=self._last_error,
                next_seq=self._next_seq,
            )

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- helpers -----------------------------------------------------------------------

    def _meta(self, key: str, default: int) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return default if row is None else int(row[0])

    def _set_meta(self, key: str, value: int) -> None:
        self._db.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                         (key, value))

    def _transaction(self):
        return _Transaction(self._db)


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on error; nests by doing nothing inside an open one."""

    def __init__(self, db: sqlite3.Connection):
        self._db = db
        self._outer = False

    def __enter__(self) -> None:
        if not self._db.in_transaction:
            self._db.execute("BEGIN IMMEDIATE")
            self._outer = True

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self._outer:
            return
        try:
            if exc_type is None:
                self._db.execute("COMMIT")
                return
        except sqlite3.Error:
            self._rollback()
            raise
        self._rollback()

    def _rollback(self) -> None:
        if self._db.in_transaction:  # SQLITE_FULL and friends may have rolled back already
            self._db.execute("ROLLBACK")
