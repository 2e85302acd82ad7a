"""The state store contract, shared by the memory and Redis backends.

A store holds exams and the live state of sessions, assigns each exam's event sequence numbers,
tells every listener in every process about each committed event, and keeps each exam's
**outbox**: the committed events (and audit rows) in commit order, appended in the same atomic
step as the change itself, until a drainer has written them to SQL. The outbox doubles as the
bounded event log dashboards recover gaps from. A store never decides anything:
`realtime.state.machine` does.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from typing import Any, Protocol

from realtime.state.drops import Drop
from realtime.state.model import Event, Exam

EventListener = Callable[[Event], Awaitable[None] | None]
CommitListener = Callable[[list[Event]], None]
"""Sees the events of this process's own commits as soon as the store has applied them."""

FINAL_STATUSES = ("completed", "terminated")


@dataclass(slots=True)
class Commit:
    """One change of one session, applied atomically or not at all.

    Three kinds, by what must still hold when the store applies it:

    * `expected_version` set: compare-and-set. The session's version must still be the one the
      decision was made on (and the `guard`, if given, must hold too: for decisions on fields
      that change without a version, such as `last_seen`); the store applies `changes` and
      bumps the version.
    * `guard` set (and no expected version): the named fields must still have these values
      (e.g. the holder's `conn_id`), and with `live_only` the session must not be final. The
      store applies `changes` without bumping the version: for frequent candidate traffic
      (progress, acks) whose changes no staff decision depends on, so they never make a
      concurrent staff command lose its compare-and-set.
    * neither: record the events, leave the session alone (refusals, irregularities).

    Two more kinds write nothing and record nothing; they only report whether what a decision
    took for granted still holds, in the same atomic step as the commits beside them:

    * `check_only` (with `expected_version`): the session's version is still that one (a
      decision NOT to change it, made on a copy that may be stale: see `command_view`).
    * `members` (session id ""): the exam still has exactly that many sessions (a bulk decision
      made on a copy that knew that many).

    With a `command_id`, the store applies the commit only if this session has not applied that
    command before (a retried command applies nothing twice). With `fresh` too, the store
    refuses it (`CommitResult.known`) if the command id is known at all (some session applied
    it, or its answer is kept): a decision made without reading the command's kept answer
    stands only for a command seen for the first time. All commits of one command id in one
    `commit` call are refused together, before any of them applies.

    `like` (a transition's, `machine.Transition.like`): commits of one call with the same
    `like` object hold equal changes and equal events but for their session (its id), so a
    store may encode the first of them and reuse that for the others. It changes nothing
    else.
    """

    exam_id: str
    session_id: str
    expected_version: int | None
    changes: dict[str, Any] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    guard: dict[str, Any] | None = None
    live_only: bool = False
    command_id: str = ""
    check_only: bool = False
    members: int | None = None
    fresh: bool = False
    like: object | None = None


@dataclass(slots=True)
class CommitResult:
    ok: bool
    events: list[Event] = field(default_factory=list)
    found: bool = True
    guard_failed: bool = False  # a guarded commit whose guard no longer held
    duplicate_seq: int | None = None  # this session already applied the command (first seq)
    known: bool = False  # a fresh commit of a command id the store already knew: refused


class CommitsFailed(Exception):
    """The commits of some exams of one `commit` call failed while those of the others may
    have gone through (one exam's commits are one atomic step: all of them or none; on Redis
    an exam's many commits may be several such steps, chunks, of which some may go through
    and others fail: `RedisStore.commit`).

    `results` has one entry per commit of the call, None for those that did not go through
    (or whose outcome is unknown); `errors` maps each failed exam to what failed it;
    `resendable` names the failed exams whose failed steps were refused before any of them
    ran (a Redis Cluster slot on the move: `realtime.state.cluster.slot_in_motion`), so that
    sending those very commits (None in `results`) again cannot apply anything twice. Any
    other failure has an unknown outcome (the step may have run).
    """

    def __init__(
        self,
        results: list[CommitResult | None],
        errors: dict[str, BaseException],
        resendable: Collection[str],
    ) -> None:
        first = next(iter(errors.values()))
        super().__init__(f"commits of {len(errors)} exam(s) failed: {first!r}")
        self.results = results
        self.errors = errors
        self.resendable = frozenset(resendable)


@dataclass(slots=True)
class OutboxEntry:
    """What one atomic step appended to an exam's outbox: its events, or audit rows."""

    exam_id: str
    entry_id: str
    events: list[Event] = field(default_factory=list)
    audit: list[dict[str, Any]] = field(default_factory=list)
    appended_at: float = 0.0


@dataclass(slots=True)
class Backlog:
    """Events committed but not yet written to SQL, over all exams."""

    events: int = 0
    oldest_at: float | None = None  # when the oldest of them was committed
    exams: int = 0


class StateStore(Protocol):
    outbox_survives_process: bool
    """Whether the outbox outlives this process: True where it lives in the store's server
    (Redis: another process drains what this one left after its lease), False where it dies
    with the process (the memory store). The drainer gathers longer only where it survives
    (`realtime.drainer.GATHER_MAX`): what a longer gather holds back from SQL is not lost by
    a crash there."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    def add_listener(self, listener: EventListener) -> None:
        """Call `listener` for every committed event, from any process, of the exams this
        process serves (see `serve`), in seq order per exam."""

    async def serve(self, exam_id: str) -> None:
        """Hear `exam_id`'s events from now on (one more holder here: a socket); returns once
        nothing committed after it can be missed. Raises if that cannot be promised now."""

    def release(self, exam_id: str) -> None:
        """One holder fewer; once none is left the exam may stop being heard."""

    def add_commit_listener(self, listener: CommitListener) -> None:
        """Call `listener` with the events of each of THIS process's commits as soon as the
        store has applied them, before they come back through the event fan-out (which still
        brings them to every `add_listener` listener, in seq order). For latency-critical
        consumers that are ordered by something of their own (a candidate page by its session
        version); they must tolerate seeing the event again."""

    def hold_fan_out(self) -> Callable[[], None]:
        """Keep this process's deferred fan-out (the commit calls of `BIG_BATCH` events or more,
        given to the listeners after their callers: `realtime.state.handoff`) until the
        returned release is called, for at most `HOLD_MAX` seconds: a caller that makes one
        more round trip before it answers (a bulk command's audit row) still answers before
        the hall's frames are written."""

    def add_resubscribe_listener(self, listener: Callable[[frozenset[str]], None]) -> None:
        """Call `listener` whenever this process's event subscription came back after a loss,
        with the exams whose missed events were read back and delivered in order; connections
        of other exams may have missed events and must resynchronise."""

    def subscription_health(self) -> dict[str, Any]:
        """For health checks: `subscribed` (this process hears committed events now), `losses`
        (times the subscription was lost or re-made), `recovered_events` (read back since),
        `exams_served` and `events_received` (None where every exam is heard in-process)."""

    def unheard(self, since: float, now: float) -> float:
        """Seconds between `since` and `now` (epoch) in which this process could not reach
        the store: nobody could be heard then, so such time must not count against anyone."""

    async def put_exam(self, exam: Exam) -> None: ...

    async def get_exam(self, exam_id: str) -> Exam | None: ...

    async def add_sessions(self, sessions: list[dict[str, Any]]) -> None:
        """Create sessions as given. Existing ids are left as they are."""

    async def get_sessions(
        self, exam_id: str, session_ids: list[str]
    ) -> list[dict[str, Any] | None]: ...

    async def read_sessions(
        self, exam_id: str, session_ids: list[str]
    ) -> list[dict[str, Any] | None]:
        """`get_sessions`, where reads (and `session_by_code` lookups) arriving together may
        share one round trip: what a change reads before it decides (a hall's opens)."""

    async def session_by_code(self, access_code: str) -> tuple[str, str] | None:
        """(exam_id, session_id) for an access code; lookups arriving together may share
        one round trip."""

    async def session_by_candidate(self, exam_id: str, candidate_id: str) -> str | None:
        """The session id of a candidate in an exam (without asking SQL)."""

    async def snapshot(
        self, exam_id: str, fields: tuple[str, ...] | None = None
    ) -> tuple[list[dict[str, Any]], int]:
        """All sessions of an exam and the exam sequence number they include (atomically);
        with `fields`, only those fields of each session (cheaper for big exams)."""

    async def stale_holders(
        self, exam_id: str, seen_before: float, dead_nodes: Collection[str] = ()
    ) -> list[str]:
        """Ids of sessions still marked connected whose `last_seen` is before `seen_before`
        (or unknown), or whose holder's connection id starts with one of `dead_nodes`
        (`<node>-…`): candidates for the sweeper. Cheap: no session is sent back whole."""

    async def node_heartbeat(
        self, node_id: str, info: dict[str, Any], now: float, timeout: float
    ) -> list[str]:
        """Record that `node_id` is alive at `now` (with `info` for operators); return the
        nodes whose last beat is older than `timeout` seconds (forgotten after an hour)."""

    async def list_nodes(self) -> list[dict[str, Any]]:
        """Nodes heard of in the last hour: `id`, `last_beat` (epoch s) and their `info`."""

    async def events_since(self, exam_id: str, seq: int) -> list[Event] | None:
        """Events after `seq`, or None when the log no longer reaches back that far (or `seq`
        is beyond what the exam reached, e.g. after its state was lost)."""

    async def commit(self, commits: list[Commit]) -> list[CommitResult]:
        """Apply many commits in one round trip; each one is atomic on its own. The events of
        one exam's commits are published as one message and appended as one outbox entry.

        Raises what failed the call if nothing of it went through; `CommitsFailed` (with the
        results of the exams that did) when the commits of some exams failed and others went
        through, or when some were refused whole and may be sent again as they are."""

    async def ensure_seq(self, exam_id: str, minimum: int) -> None:
        """Make the exam's next sequence number larger than `minimum` (after a state loss,
        numbering must go on from what SQL already holds)."""

    async def touch(
        self, holders: list[tuple[str, str, str]], now: float
    ) -> list[tuple[str, str, str]]:
        """Refresh `last_seen` of sessions still held by these (exam, session, conn_id)
        holders, without an event (liveness heartbeat). Returns the holders whose session
        was marked disconnected meanwhile (e.g. by a sweeper during an outage) although the
        connection still holds it: the caller re-marks them connected, with an event."""

    # -- commands ----------------------------------------------------------------------------

    async def command_result(self, exam_id: str, command_id: str) -> dict[str, Any] | None:
        """The stored answer of a finished command, for idempotent retries."""

    async def command_applied(self, exam_id: str, command_id: str) -> dict[str, int]:
        """Sessions that applied a command, with the seq of their first event of it."""

    async def read_for_command(
        self, exam_id: str, command_id: str, session_ids: list[str],
        fields: tuple[str, ...] | None = None,
    ) -> tuple[dict[str, Any] | None, dict[str, int], list[dict[str, Any] | None]]:
        """`command_result`, `command_applied` (both skipped without a command id) and
        `get_sessions` (with `fields`, only those fields, as `snapshot` gives them), in one
        round trip: what a targeted command reads before deciding. Reads of many commands
        arriving together may share that round trip."""

    async def command_view(
        self, exam_id: str, fields: tuple[str, ...], whole: bool
    ) -> dict[str, dict[str, Any]] | None:
        """This process's copy of the exam's sessions (those `fields`, by session id), kept
        current from the exam's events, for staff commands to decide on without a read; None
        when there is none to trust now (then read the store). It may be behind the store: a
        decision on it stands only through compare-and-set commits, `check_only` commits for
        what it decided not to change and, for a decision over the `whole` exam, a `members`
        commit (see `Commit`). The caller must not change it. With `whole`, a missing copy may
        be made at once (the caller would read every session anyway); without, only later."""

    def forget_view(self, exam_id: str) -> None:
        """The copy of the exam (see `command_view`) proved incomplete or the store lost the
        exam: make it again from the store before it is used again."""

    def warm_views(self, fields: tuple[str, ...]) -> None:
        """From now on, make an exam's copy (see `command_view`, with these `fields`) in the
        background as this process starts serving the exam, so the first staff command finds
        it made; it never delays `serve`. Once per start of serving: a copy dropped later is
        made again by the next command."""

    def command_copies(self) -> dict[str, int]:
        """Counts since start, for metrics: copies `made`, whole-exam `reads` started to make
        them, and those started by `warm_views` (`warmed`). Zeros where there is no copy."""

    async def save_command_result(
        self, exam_id: str, command_id: str, result: dict[str, Any]
    ) -> None:
        """Keep a command's answer for its retries (a day). May be sent with other
        commands' reads and answers, a loop turn later: callers do not wait for it."""

    # -- the outbox --------------------------------------------------------------------------

    async def append_audit(self, exam_id: str, rows: list[dict[str, Any]]) -> None:
        """Append audit rows to the exam's outbox (written to SQL by the drainer)."""

    async def outbox_exams(self) -> list[str]:
        """Exams whose outbox may hold something."""

    async def outbox_claim(
        self, exam_id: str, consumer: str, count: int, lease: float
    ) -> list[OutboxEntry] | None:
        """Up to `count` undrained entries of an exam, oldest first, for `consumer` to write
        to SQL; entries read before by a consumer that died are claimed again first. One
        consumer drains an exam at a time (a lease of `lease` seconds, renewed by each call):
        None when another live consumer holds it."""

    async def outbox_ack(self, exam_id: str, consumer: str, entries: list[OutboxEntry]) -> None:
        """The entries are in SQL: forget them (the event log keeps the recent ones)."""

    async def outbox_pending(self, exam_id: str) -> int:
        """How many outbox entries of one exam are not yet acknowledged as written."""

    async def outbox_backlog(self, now: float) -> Backlog:
        """What is committed but not yet acknowledged as written to SQL."""

    # -- drop alerts (realtime/state/drops.py) -------------------------------------------------

    async def record_drops(
        self, exam_id: str, drops: list[Drop], window: float, threshold: int, active: float
    ) -> dict[str, Any] | None:
        """Count these drops (idempotent per seq, whichever process reports them) among the
        exam's drops of the last `window` seconds. Returns the alert when THIS call raised it:
        `threshold` different candidates dropped and no alert was active. An active alert
        stays active for `active` seconds after the latest drop; none is raised meanwhile."""

    async def active_alerts(self, exam_id: str) -> list[dict[str, Any]]:
        """The exam's active drop alert (none or one), for dashboards that connect later."""


def apply_locally(
    session: dict[str, Any], commit: Commit
) -> dict[str, Any]:
    """The session after a commit: used by stores and callers that keep a copy."""
    updated = dict(session)
    if commit.expected_version is None and commit.guard is None:
        return updated
    updated.update(commit.changes)
    if commit.expected_version is not None:
        updated["version"] = commit.expected_version + 1
    return updated
