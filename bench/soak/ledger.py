"""The soak's bookkeeping: every record the server acknowledged, every body it refused as
infected, every outcome counted, every loss written down.

A record's state decides what the end of the run expects of it: ``LIVE`` and ``PINNED`` ones
are downloaded and their sha-256 compared, ``DELETED`` ones must answer 404. Operations
that need a record to stay put take it exclusively here (the driver is one event loop, so a
pick and its state change are atomic): a same-name re-upload pins its record (never deleted
afterwards: its answer must be that record), a delete takes a record nobody is reading, a
read takes one nobody is deleting.
"""

from __future__ import annotations

import enum
import random
from collections import Counter, deque
from dataclasses import dataclass, field

from bench.soak.bodies import Body

#: Losses kept with their detail (all are counted).
DETAIL_LIMIT = 100
#: Acknowledged bodies remembered as sources of duplicates.
DUPLICATE_SOURCES = 4000


class State(enum.StrEnum):
    LIVE = "live"
    #: Re-uploaded under its own name: the answer was this record again; never deleted.
    PINNED = "pinned"
    DELETING = "deleting"
    DELETED = "deleted"


@dataclass
class Record:
    owner: str
    id: str
    name: str
    body: Body
    sha256: str
    state: State = State.LIVE
    #: Answers that named this record (201 once, then one 200 per same-name re-upload).
    acks: int = 1
    #: Reads in progress: a record being read is not deleted.
    readers: int = 0

    @property
    def expected_present(self) -> bool:
        return self.state in (State.LIVE, State.PINNED)


@dataclass
class Ledger:
    records: dict[tuple[str, str], Record] = field(default_factory=dict)
    #: Keys of the newest records, where picks are made.
    recent: deque[tuple[str, str]] = field(default_factory=lambda: deque(maxlen=DUPLICATE_SOURCES))
    #: (body, sha256, owner) of acknowledged clean bodies, newest last.
    clean: deque[tuple[Body, str, str]] = field(
        default_factory=lambda: deque(maxlen=DUPLICATE_SOURCES)
    )
    #: (body, sha256, owner) of deleted records (re-uploaded: stored again).
    deleted_bodies: deque[tuple[Body, str, str]] = field(default_factory=lambda: deque(maxlen=500))
    #: sha256 -> a body refused as infected.
    infected: dict[str, Body] = field(default_factory=dict)
    #: (owner, name) of every upload cut mid-body: no record may have that name.
    aborted: set[tuple[str, str]] = field(default_factory=set)
    counts: Counter[str] = field(default_factory=Counter)
    losses: Counter[str] = field(default_factory=Counter)
    loss_details: list[str] = field(default_factory=list)
    #: Seconds from the first byte sent to the answer, by outcome and size class.
    latencies: dict[str, list[float]] = field(default_factory=dict)
    bytes_acknowledged: int = 0
    bytes_sent: int = 0

    # -- outcomes -------------------------------------------------------------------------

    def count(self, what: str, n: int = 1) -> None:
        self.counts[what] += n

    def loss(self, kind: str, detail: str) -> None:
        self.losses[kind] += 1
        if len(self.loss_details) < DETAIL_LIMIT:
            self.loss_details.append(f"{kind}: {detail}")

    def latency(self, key: str, seconds: float) -> None:
        self.latencies.setdefault(key, []).append(seconds)

    def acknowledged(self, owner: str, file_id: str, name: str, body: Body, sha256: str) -> Record:
        record = Record(owner, file_id, name, body, sha256)
        self.records[(owner, file_id)] = record
        self.recent.append((owner, file_id))
        self.clean.append((body, sha256, owner))
        self.bytes_acknowledged += body.size
        return record

    # -- picks (atomic: one event loop) ---------------------------------------------------

    def pick_clean(self, rng: random.Random) -> tuple[Body, str, str] | None:
        return rng.choice(self.clean) if self.clean else None

    def _live(self, rng: random.Random, tries: int = 20) -> Record | None:
        """A random recent record that is LIVE or PINNED (the newest are the interesting
        ones: still racing with their duplicates and deletes)."""
        for _ in range(tries if self.recent else 0):
            record = self.records[rng.choice(self.recent)]
            if record.expected_present:
                return record
        return None

    def pin(self, rng: random.Random) -> Record | None:
        """A record to re-upload under its own name: pinned for good."""
        record = self._live(rng)
        if record is not None:
            record.state = State.PINNED
        return record

    def take_for_delete(self, rng: random.Random) -> Record | None:
        for _ in range(5):
            record = self._live(rng)
            if record is not None and record.state is State.LIVE and record.readers == 0:
                record.state = State.DELETING
                return record
        return None

    def take_for_read(self, rng: random.Random) -> Record | None:
        record = self._live(rng)
        if record is not None:
            record.readers += 1
        return record

    def deleted(self, record: Record) -> None:
        record.state = State.DELETED
        self.deleted_bodies.append((record.body, record.sha256, record.owner))

    # -- the end --------------------------------------------------------------------------

    def expected_live(self) -> list[Record]:
        return [r for r in self.records.values() if r.expected_present]

    def expected_deleted(self) -> list[Record]:
        return [r for r in self.records.values() if r.state is State.DELETED]
