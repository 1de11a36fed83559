"""Durable store-and-forward queue for outbound MQTT messages (SQLite, WAL).

A message is written here before it is handed to the MQTT client and deleted only when
the broker acknowledges it, so a broker outage, SIGKILL or power cut loses nothing that
``put`` stored. The device-wide sequence number lives in the same database and is
assigned in the same transaction as the row, so it keeps increasing across restarts.

Why ``synchronous=FULL``: in WAL mode NORMAL may lose the last commits on power loss.
Each ``put`` therefore costs an fsync; only the dispatcher thread calls it, so a slow
disk delays the outbox, never capture or inference.

When SQLite cannot write (disk full, read-only media):

* the message is **held in memory** (bounded by the same entry limit) and written as soon
  as the disk accepts it again; meanwhile it is **sent anyway** when the broker is up
  (``take_held``): at-least-once over MQTT beats keeping it from the broker;
* the sequence number it used is recorded in ``<db>.seq``, a tiny file whose space is
  allocated when it is created and which is rewritten in place, so it can be updated on a
  full disk; the next start continues above it and never reuses a number;
* an acknowledged message whose delete failed is remembered, not sent again, and its
  delete is retried (``retry``) until it succeeds;
* ``close`` makes a last attempt to store what is held and reports what it could not
  (an error line, and an ``unstored`` drop reported at the next start through ``.seq``).

A database that cannot be opened (not a database, truncated, another table layout) is
moved aside (kept, named in one log line and in ``damage``), the rows that can still be
read are copied into a fresh outbox, and the daemon runs on.

The state files are private (0600): they hold transcripts.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import struct
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Optional

from edgescribe.daemon.config.mqtt import MqttConfig
from edgescribe.engines.errors import EdgescribeError

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
_COLUMNS = ["id", "seq", "topic", "payload", "qos", "retain", "created"]
_SIDE_FILES = ("-wal", "-shm")


@dataclass(frozen=True)
class OutboxLimits:
    max_entries: int = 100_000
    max_bytes: int = 64 * 1024 * 1024
    max_age_s: float = 7 * 24 * 3600.0

    @classmethod
    def from_config(cls, mqtt: MqttConfig) -> "OutboxLimits":
        return cls(max_entries=mqtt.outbox_max_entries, max_bytes=int(mqtt.outbox_max_mb * 1024 * 1024),
                   max_age_s=mqtt.outbox_max_age_h * 3600.0)


@dataclass(frozen=True)
class OutboxEntry:
    id: int  # row id, increasing; negative while held in memory during a disk failure
    seq: int
    topic: str
    payload: bytes
    qos: int
    retain: bool
    created: float


@dataclass(frozen=True)
class Drops:
    """Entries removed to respect the bounds by one operation (or lost at the last stop)."""

    size: int = 0
    age: int = 0
    unstored: int = 0

    def __bool__(self) -> bool:
        return bool(self.size or self.age or self.unstored)


@dataclass(frozen=True)
class OutboxDamage:
    """The database found at start could not be used; what became of it."""

    moved_to: Path
    recovered: int
    detail: str


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


class _Damaged(Exception):
    pass


class SeqMark:
    """``next_seq`` and messages lost at a stop, in a preallocated file rewritten in place.

    Writing into blocks that already belong to the file needs no free space (true of
    tmpfs, ext4 and f2fs; not of copy-on-write file systems such as btrfs), so this keeps
    working when SQLite reports the disk full.
    """

    _FORMAT = struct.Struct("<8sQQ")
    _MAGIC = b"esseq001"
    _SIZE = 4096

    def __init__(self, path: Path):
        self.path = path
        self.next_seq, self.lost = 0, 0
        self._fd: Optional[int] = None
        self._failing = False
        try:
            self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            os.fchmod(self._fd, 0o600)
            data = os.pread(self._fd, self._FORMAT.size, 0)
            if len(data) == self._FORMAT.size:
                magic, next_seq, lost = self._FORMAT.unpack(data)
                if magic == self._MAGIC:
                    self.next_seq, self.lost = next_seq, lost
            if os.fstat(self._fd).st_size < self._SIZE:
                os.posix_fallocate(self._fd, 0, self._SIZE)
        except OSError as error:
            log.error("outbox sequence mark %s cannot be prepared (%s); a restart during a disk failure may "
                      "reuse sequence numbers", path, error.strerror or error)

    def write(self, next_seq: int, lost: int) -> bool:
        if self._fd is None:
            return False
        try:
            os.pwrite(self._fd, self._FORMAT.pack(self._MAGIC, next_seq, lost), 0)
            os.fdatasync(self._fd)
        except OSError as error:
            if not self._failing:  # once per episode
                log.error("outbox sequence mark %s cannot be written (%s); a restart before the disk recovers "
                          "may reuse sequence numbers", self.path, error.strerror or error)
            self._failing = True
            return False
        self._failing = False
        self.next_seq, self.lost = next_seq, lost
        return True

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class Outbox:
    """Thread-safe; one SQLite connection guarded by a lock (writes are serialised anyway)."""

    def __init__(self, path: Path, limits: OutboxLimits = OutboxLimits(), clock: Callable[[], float] = time.time):
        self.path = Path(path)
        self.limits = limits
        self._clock = clock
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.damage: Optional[OutboxDamage] = None
        self._mark = SeqMark(self.path.with_name(self.path.name + ".seq"))
        try:
            self._db = self._open()
        except sqlite3.OperationalError as error:  # in use, disk full, unreadable: not the file's fault
            hint = " (is another edgescribe running with this state directory?)" if "locked" in str(error) else ""
            raise EdgescribeError(f"outbox {self.path} cannot be opened: {error}{hint}") from None
        except (sqlite3.DatabaseError, _Damaged) as error:  # not a database, malformed, another layout
            self._db = self._replace_damaged(error)
        self._next_seq = max(self._meta("next_seq", 1), self._mark.next_seq, self._max_stored_seq() + 1)
        self._dropped_size = self._meta("dropped_size", 0)
        self._dropped_age = self._meta("dropped_age", 0)
        self._unreported = Drops(self._meta("unreported_size", 0), self._meta("unreported_age", 0), self._mark.lost)
        # Written-but-not-durable entries during a disk failure, by (negative) id, oldest first.
        self._held: OrderedDict[int, OutboxEntry] = OrderedDict()
        self._held_sending: set[int] = set()  # handed to the broker, not yet acknowledged
        self._stored_sending: dict[int, int] = {}  # held id -> row id: stored after it was handed out
        self._next_held_id = -1
        self._undeleted: set[int] = set()  # acknowledged rows whose delete failed
        self._write_errors = 0
        self._last_error: Optional[str] = None
        self._failing = False
        depth, size = self._db.execute("SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM outbox").fetchone()
        self._depth, self._bytes = depth, size
        if depth:
            log.info("outbox %s holds %d unsent messages from a previous run", self.path, depth)

    # -- opening ------------------------------------------------------------------

    def _open(self) -> sqlite3.Connection:
        for suffix in ("", *_SIDE_FILES):
            _make_private(Path(str(self.path) + suffix))
        db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None, timeout=5.0)
        try:
            # One process owns the outbox. Exclusive locking also keeps the WAL index in memory
            # instead of a -shm file, which could not be created when a restart finds the disk full.
            db.execute("PRAGMA locking_mode=EXCLUSIVE")
            # Checked before anything is written, so a damaged file is moved aside as it was found.
            columns = [row[1] for row in db.execute("PRAGMA table_info(outbox)")]
            if columns not in ([], _COLUMNS):
                raise _Damaged(f"its outbox table has columns {', '.join(columns)}; expected {', '.join(_COLUMNS)}")
            meta = [row[1] for row in db.execute("PRAGMA table_info(meta)")]
            if meta not in ([], ["key", "value"]):
                raise _Damaged(f"its meta table has columns {', '.join(meta)}; expected key, value")
            problems = [row[0] for row in db.execute("PRAGMA quick_check")]
            if problems != ["ok"]:
                raise _Damaged(f"integrity check: {problems[0]}")
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.executescript(_SCHEMA)
            db.execute("SELECT COUNT(*), SUM(LENGTH(payload)), MAX(seq) FROM outbox").fetchone()
            db.execute("SELECT key, value FROM meta").fetchall()
        except BaseException:
            db.close()
            raise
        for suffix in _SIDE_FILES:  # created by SQLite just now
            _make_private(Path(str(self.path) + suffix))
        return db

    def _replace_damaged(self, error: Exception) -> sqlite3.Connection:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        moved = self.path.with_name(f"{self.path.name}.damaged-{stamp}")
        os.replace(self.path, moved)
        for suffix in _SIDE_FILES:
            side = Path(str(self.path) + suffix)
            if side.exists():
                os.replace(side, Path(str(moved) + suffix))
        rows, meta_next_seq = _salvage(moved)
        db = self._open()
        with _Transaction(db):
            db.executemany("INSERT INTO outbox (seq, topic, payload, qos, retain, created) VALUES (?, ?, ?, ?, ?, ?)",
                           rows)
            next_seq = max([meta_next_seq, self._mark.next_seq] + [row[0] + 1 for row in rows])
            db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('next_seq', ?)", (max(1, next_seq),))
        detail = str(error) or type(error).__name__
        self.damage = OutboxDamage(moved, len(rows), detail)
        log.error("outbox %s was damaged (%s): moved it to %s, recovered %d message(s), started a fresh outbox",
                  self.path, detail, moved, len(rows))
        return db

    # -- writing ------------------------------------------------------------------

    def put(self, topic: str, build_payload: Callable[[int], bytes], qos: int = 1, retain: bool = False
            ) -> tuple[OutboxEntry, Drops]:
        """Assign the next sequence number, build the payload with it, store it durably
        (or hold it in memory while the disk refuses; see the module docstring).

        Returns the entry and the entries dropped (oldest first) to stay within bounds.
        """
        with self._lock:
            seq = self._next_seq
            self._next_seq += 1
            now = self._clock()
            payload = build_payload(seq)
            entry = OutboxEntry(0, seq, topic, payload, qos, retain, now)
            self._flush_held()
            drops = Drops()
            if self._held:  # disk still failing: keep order by queueing behind what's in memory
                entry = self._hold(entry)
            else:
                try:
                    drops = self._make_room(1, len(payload), now)
                    entry = self._insert(entry)
                except sqlite3.Error as error:
                    self._note_failure(error)
                    entry = self._hold(entry)
            if self._held:
                drops = Drops(drops.size + self._bound_held(), drops.age)
            return entry, drops

    def _insert(self, entry: OutboxEntry) -> OutboxEntry:
        with self._transaction():
            cursor = self._db.execute(
                "INSERT INTO outbox (seq, topic, payload, qos, retain, created) VALUES (?, ?, ?, ?, ?, ?)",
                (entry.seq, entry.topic, entry.payload, entry.qos, int(entry.retain), entry.created),
            )
            self._set_meta("next_seq", max(entry.seq + 1, self._next_seq))
        self._depth += 1
        self._bytes += len(entry.payload)
        self._note_success()
        return OutboxEntry(cursor.lastrowid, entry.seq, entry.topic, entry.payload, entry.qos, entry.retain,
                           entry.created)

    def _hold(self, entry: OutboxEntry) -> OutboxEntry:
        held = OutboxEntry(self._next_held_id, entry.seq, entry.topic, entry.payload, entry.qos, entry.retain,
                           entry.created)
        self._next_held_id -= 1
        self._held[held.id] = held
        # The seq is spent whatever becomes of the message: never hand it out again.
        if self._mark.next_seq < self._next_seq:
            self._mark.write(self._next_seq, self._mark.lost)
        return held

    def _bound_held(self) -> int:
        # Oldest held entries go first, as on disk; the count joins the size drops.
        dropped = 0
        for entry_id in list(self._held):
            if len(self._held) + self._depth <= self.limits.max_entries:
                break
            if entry_id not in self._held_sending:
                del self._held[entry_id]
                dropped += 1
        if dropped:
            self._count_drops(Drops(size=dropped))
        return dropped

    def _flush_held(self) -> None:
        """Write entries held during a disk failure into the database, oldest first.

        One already handed to the broker is stored too (a crash must not lose it) but not
        handed out again; its acknowledgement deletes the row."""
        for entry_id, held in list(self._held.items()):
            try:
                self._make_room(1, len(held.payload), self._clock())
                row = self._insert(held)
            except sqlite3.Error as error:
                self._note_failure(error)
                return
            del self._held[entry_id]
            if entry_id in self._held_sending:
                self._held_sending.discard(entry_id)
                self._stored_sending[entry_id] = row.id

    def _note_failure(self, error: sqlite3.Error) -> None:
        self._write_errors += 1
        self._last_error = f"{type(error).__name__}: {error}"
        if not self._failing:
            log.error("outbox %s cannot be written (%s); holding messages in memory and retrying", self.path, error)
            self._failing = True

    def _note_success(self) -> None:
        if self._failing:
            self._failing = False
            self._last_error = None
            log.info("outbox %s is writable again", self.path)

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
        self._unreported = Drops(self._unreported.size + drops.size, self._unreported.age + drops.age,
                                 self._unreported.unstored)
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
            if drops.size or drops.age:
                try:
                    with self._transaction():
                        self._set_meta("unreported_size", 0)
                        self._set_meta("unreported_age", 0)
                except sqlite3.Error as error:
                    self._note_failure(error)
            if drops.unstored:
                self._mark.write(max(self._mark.next_seq, self._next_seq), 0)
            return drops

    def _delete_where(self, where: str, args: tuple) -> int:
        with self._transaction():
            rows = self._db.execute(f"SELECT id, LENGTH(payload) FROM outbox WHERE {where}", args).fetchall()
            if rows:
                self._db.execute(f"DELETE FROM outbox WHERE {where}", args)
        self._depth -= len(rows)
        self._bytes -= sum(size for _, size in rows)
        self._undeleted.difference_update(row_id for row_id, _ in rows)
        if rows:
            self._note_success()
        return len(rows)

    def expire(self) -> Drops:
        """Drop entries older than the age bound (called periodically by the sender)."""
        with self._lock:
            self._flush_held()
            try:
                return self._make_room(0, 0, self._clock()) if self._depth else Drops()
            except sqlite3.Error as error:
                self._note_failure(error)
                return Drops()

    # -- reading and acknowledging ---------------------------------------------------

    def pending(self, after_id: int, limit: int) -> list[OutboxEntry]:
        """Stored entries with id > after_id, oldest first (acknowledged ones excluded)."""
        with self._lock:
            skip = self._undeleted | set(self._stored_sending.values())
            rows = self._db.execute(
                "SELECT id, seq, topic, payload, qos, retain, created FROM outbox WHERE id > ? ORDER BY id LIMIT ?",
                (after_id, limit + len(skip)),
            ).fetchall()
            entries = [OutboxEntry(r[0], r[1], r[2], bytes(r[3]), r[4], bool(r[5]), r[6]) for r in rows
                       if r[0] not in skip]
            return entries[:limit]

    def take_held(self, limit: int) -> list[OutboxEntry]:
        """Up to ``limit`` entries held in memory (the disk refused them) and not yet handed
        out, oldest first; they are marked as being sent, so they are not written any more
        and leave on ``ack``. Sending beats holding: the broker keeps them if we cannot."""
        with self._lock:
            taken = []
            for entry_id, entry in self._held.items():
                if len(taken) >= limit:
                    break
                if entry_id not in self._held_sending:
                    self._held_sending.add(entry_id)
                    taken.append(entry)
            return taken

    def held(self) -> int:
        """How many entries the disk refused and memory holds (sent or not)."""
        with self._lock:
            return len(self._held)

    def ack(self, entry_id: int) -> None:
        """The broker acknowledged the entry: delete it. Unknown ids (already dropped) are ignored."""
        with self._lock:
            if entry_id < 0:
                self._held.pop(entry_id, None)
                self._held_sending.discard(entry_id)
                entry_id = self._stored_sending.pop(entry_id, 0)
                if not entry_id:
                    return
            try:
                self._delete_where("id = ?", (entry_id,))
            except sqlite3.Error as error:
                # Remembered and retried: sending it again after a restart would be a resend storm.
                self._undeleted.add(entry_id)
                self._note_failure(error)

    def retry(self) -> None:
        """Retry what a disk failure left undone: deletes of acknowledged rows, writes of held entries."""
        with self._lock:
            self._retry_deletes()
            if self._held:
                self._flush_held()

    def _retry_deletes(self) -> None:
        if not self._undeleted:
            return
        ids = sorted(self._undeleted)
        try:
            self._delete_where(f"id IN ({','.join('?' * len(ids))})", tuple(ids))
        except sqlite3.Error as error:
            self._note_failure(error)
            return
        self._undeleted.difference_update(ids)  # rows already gone (dropped at a bound) count as done

    def stats(self) -> OutboxStats:
        with self._lock:
            oldest = None
            if self._held:
                oldest = next(iter(self._held.values())).created
            waiting = self._depth - len(self._undeleted)
            if waiting:
                exclude = ",".join(str(i) for i in self._undeleted) or "0"
                row = self._db.execute(f"SELECT MIN(created), COALESCE(SUM(LENGTH(payload)), 0) FROM outbox "
                                       f"WHERE id NOT IN ({exclude})").fetchone()
                oldest = row[0] if oldest is None else min(oldest, row[0])
                stored_bytes = row[1]
            else:
                stored_bytes = 0
            return OutboxStats(
                depth=waiting + len(self._held),
                bytes=stored_bytes + sum(len(e.payload) for e in self._held.values()),
                oldest_age_s=None if oldest is None else max(0.0, self._clock() - oldest),
                dropped_size_total=self._dropped_size,
                dropped_age_total=self._dropped_age,
                write_errors=self._write_errors,
                last_error=self._last_error,
                next_seq=self._next_seq,
            )

    def close(self) -> list[OutboxEntry]:
        """Last attempt to store held entries and delete acknowledged ones; returns the held
        entries that could not be stored (lost: logged here, reported at the next start)."""
        with self._lock:
            self._held_sending.clear()  # unacknowledged: they must be stored to survive
            self._stored_sending.clear()
            self._retry_deletes()
            self._flush_held()
            lost = list(self._held.values())
            if lost:
                seqs = [entry.seq for entry in lost]
                log.error("outbox %s: %d message(s) (seq %s) could neither be stored nor delivered before the "
                          "stop and are lost (%s)", self.path, len(lost), _ranges(seqs), self._last_error)
                self._held.clear()
            self._mark.write(max(self._mark.next_seq, self._next_seq), self._mark.lost + len(lost))
            self._db.close()
            self._mark.close()
            return lost

    # -- helpers -----------------------------------------------------------------------

    def _max_stored_seq(self) -> int:
        return self._db.execute("SELECT COALESCE(MAX(seq), 0) FROM outbox").fetchone()[0]

    def _meta(self, key: str, default: int) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return default if row is None else int(row[0])

    def _set_meta(self, key: str, value: int) -> None:
        self._db.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                         (key, value))

    def _transaction(self):
        return _Transaction(self._db)


def _make_private(path: Path) -> None:
    """Create ``path`` (if the database itself) or tighten it to 0600 (if it exists)."""
    try:
        if path.exists():
            if path.stat().st_mode & 0o077:
                os.chmod(path, 0o600)
        elif not str(path).endswith(_SIDE_FILES):
            os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))  # SQLite gives -wal/-shm the same mode
    except OSError as error:
        log.warning("cannot make %s private: %s", path, error.strerror or error)


def _salvage(path: Path) -> tuple[list[tuple], int]:
    """Rows (seq, topic, payload, qos, retain, created) still readable in a damaged outbox, and its next_seq."""
    rows: list[tuple] = []
    next_seq = 0
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
    except sqlite3.Error:
        return rows, next_seq
    try:
        # Read-only, and lets the schema be read when pages it does not need are damaged.
        db.execute("PRAGMA writable_schema=1")
        columns = {row[1] for row in db.execute("PRAGMA table_info(outbox)")}
        if {"seq", "topic", "payload"} <= columns:
            select = ", ".join(name if name in columns else default for name, default in (
                ("seq", "0"), ("topic", "''"), ("payload", "x''"), ("qos", "1"), ("retain", "0"),
                ("created", str(time.time()))))
            order = "ORDER BY id" if "id" in columns else ""
            for row in db.execute(f"SELECT {select} FROM outbox {order}"):
                seq, topic, payload = row[0], row[1], row[2]
                if isinstance(seq, int) and seq > 0 and isinstance(topic, str) and topic:
                    if isinstance(payload, str):
                        payload = payload.encode("utf-8")
                    if isinstance(payload, bytes):
                        rows.append((seq, topic, payload, int(row[3] or 1), int(row[4] or 0), float(row[5] or 0)))
    except (sqlite3.Error, ValueError, TypeError):
        pass  # whatever was read before the damage is kept
    try:
        found = db.execute("SELECT value FROM meta WHERE key = 'next_seq'").fetchone()
        next_seq = int(found[0]) if found else 0
    except (sqlite3.Error, ValueError, TypeError):
        pass
    finally:
        db.close()
    return rows, next_seq


def _ranges(seqs: list[int]) -> str:
    """'3-5, 9' for [3, 4, 5, 9]."""
    parts, start = [], None
    for index, seq in enumerate(seqs):
        if start is None:
            start = seq
        if index + 1 == len(seqs) or seqs[index + 1] != seq + 1:
            parts.append(str(seq) if seq == start else f"{start}-{seq}")
            start = None
    return ", ".join(parts)


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
