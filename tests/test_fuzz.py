"""Bounded fuzzing of a real server: both WebSocket endpoints with generated frames in both
codecs (hypothesis), and the REST API from its own OpenAPI document (schemathesis).

Whatever arrives: no 5xx, no internal-error close (1011), no traceback in the server's log,
the server stays healthy and a candidate of another exam is unaffected. The example counts
keep the module to a couple of minutes on two busy cores.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import msgpack
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from server import STAFF_TOKEN, ServerProcess
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from realtime.errors import CloseCode
from realtime.state.model import Action, Status

pytestmark = pytest.mark.postgres

JSON = "realtime.v1.json"
MSGPACK = "realtime.v1.msgpack"
AUTH = {"Authorization": f"Bearer {STAFF_TOKEN}"}
DOCUMENTED_CLOSES = frozenset(int(code) for code in CloseCode)  # 1011 is not among them
REPLY_TIMEOUT = 15.0
FUZZ = settings(
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)


def strict_json(text: str | bytes) -> Any:
    def refuse(token: str) -> Any:
        raise AssertionError(f"the server wrote the non-standard JSON token {token}")

    return json.loads(text, parse_constant=refuse)


class Hall:
    """The fuzzed server's fixtures: exams, spare sessions, and a bystander who must not notice."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.http = httpx.Client(base_url=server.url, headers=AUTH, timeout=30)
        self.exam_id = self._exam("fuzz")
        self.codes: list[str] = []
        self.tokens: list[str] = []
        self.session_ids: list[str] = []
        self.bystander_exam = self._exam("bystander")
        [self.bystander] = self._sessions(self.bystander_exam, 1)
        self.bystander_inbox: queue.Queue[dict[str, Any]] = queue.Queue()
        self._stack = contextlib.ExitStack()
        self._bystander_ws = self._stack.enter_context(
            connect(f"{server.ws_url}/ws/candidate", subprotocols=[JSON],  # type: ignore[list-item]
                    ping_interval=None)  # its keepalive thread would draw from `random`
        )
        self._bystander_ws.send(json.dumps(
            {"type": "open", "access_code": self.bystander["access_code"]}))
        self._reader = threading.Thread(target=self._read_bystander, daemon=True)
        self._reader.start()
        self.more_sessions()
        user = self.http.post("/api/v1/users", json={
            "full_name": "Fuzz Target", "email": "fuzz@example.org", "roles": ["proctor"]})
        assert user.status_code == 201, user.text
        self.user_id: str = user.json()["user"]["id"]

    def _exam(self, prefix: str) -> str:
        response = self.http.post("/api/v1/exams", json={
            "id": f"{prefix}-{uuid.uuid4().hex[:8]}", "title": prefix})
        assert response.status_code == 201, response.text
        exam_id: str = response.json()["id"]
        return exam_id

    def _sessions(self, exam_id: str, count: int) -> list[dict[str, Any]]:
        candidates = [{"candidate_id": f"c-{uuid.uuid4().hex[:10]}", "name": "Fuzz"}
                      for _ in range(count)]
        response = self.http.post(f"/api/v1/exams/{exam_id}/sessions",
                                  json={"candidates": candidates})
        assert response.status_code == 201, response.text
        sessions: list[dict[str, Any]] = response.json()["sessions"]
        return sessions

    def more_sessions(self) -> None:
        for session in self._sessions(self.exam_id, 20):
            self.codes.append(session["access_code"])
            self.tokens.append(session["token"])
            self.session_ids.append(session["id"])

    def fresh_code(self) -> str:
        if not self.codes:
            self.more_sessions()
        return self.codes.pop()

    def _read_bystander(self) -> None:
        with contextlib.suppress(ConnectionClosed):
            for frame in self._bystander_ws:
                message = json.loads(frame)
                if message["type"] == "ping":
                    self._bystander_ws.send(json.dumps({"type": "pong", "t": message["t"]}))
                self.bystander_inbox.put(message)

    def bystander_gets(self, kind: str) -> dict[str, Any]:
        deadline = time.monotonic() + REPLY_TIMEOUT
        while True:
            message = self.bystander_inbox.get(timeout=max(0.1, deadline - time.monotonic()))
            if message["type"] == kind:
                return message

    def views_load(self) -> None:
        """What a dashboard loads of the fuzzed exam answers 200 in standard JSON."""
        for path in (f"/api/v1/exams/{self.exam_id}/sessions", f"/api/v1/exams/{self.exam_id}"):
            response = self.http.get(path)
            assert response.status_code == 200, (path, response.status_code, response.text)
            strict_json(response.content)

    def close(self) -> None:
        self._stack.close()
        self._reader.join(5)
        self.http.close()


@pytest.fixture(scope="module")
def fuzz_server(pg_url: str) -> Iterator[ServerProcess]:
    # Message rates off: a frame over the rate is dropped unanswered (tests/test_limits_e2e.py),
    # and every sentinel here must be answered. Webhooks the fuzzer subscribes may only point
    # at 127.0.0.1 (no traffic elsewhere).
    process = ServerProcess(database_url=pg_url, candidate_message_rate=0,
                            dashboard_message_rate=0,
                            webhook_allowed_hosts="127.0.0.1/32").start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def hall(fuzz_server: ServerProcess) -> Iterator[Hall]:
    hall = Hall(fuzz_server)
    assert hall.bystander_gets("opened")["session"]["id"] == hall.bystander["id"]
    yield hall
    hall.close()


# -- generated frames ------------------------------------------------------------------------

NASTY_TEXT = st.sampled_from(["", "\x00", "é☃", "a" * 300, "ABCD-2345", "all", "null", "-1",
                              "\ud7ff", "<script>", "\n"])
SCALARS = st.one_of(
    st.none(), st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.sampled_from([0, -1, 1, 2**53, 2**53 - 1, -(2**53), 1_000_000, 1_000_001, 1441]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([float("nan"), float("inf"), -1e308, 1e308, 0.5, time.time()]),
    st.text(max_size=20), NASTY_TEXT,
    st.binary(max_size=12),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12,
)
CANDIDATE_FIELDS = ["access_code", "token", "exam_id", "resume_token", "client_id", "t",
                    "position", "answered", "name", "detail", "command_id", "kind"]
PROCTOR_FIELDS = ["exam_id", "last_seq", "request_id", "action", "target", "reason",
                  "minutes", "text", "command_id", "t", "session_ids", "status", "group"]
CANDIDATE_TYPES = ["open", "pong", "progress", "client_event", "ack", "submit", "ping",
                   "subscribe", "command", "state", ""]
PROCTOR_TYPES = ["subscribe", "command", "ping", "pong", "open", "progress", "events", ""]
TARGETS = st.one_of(
    st.just("all"), VALUES,
    st.fixed_dictionaries({}, optional={
        "status": st.one_of(st.sampled_from([s.value for s in Status]), VALUES),
        "group": VALUES, "search": VALUES, "all": VALUES, "session_ids": VALUES,
        "nope": VALUES}),
)


def messages(types: list[str], fields: list[str], extra: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Maps shaped like messages: a known or random type, known fields with any values."""
    kind = st.one_of(*[st.sampled_from(types)] * 6, st.text(max_size=10), VALUES)
    typed = st.fixed_dictionaries(
        {"type": kind}, optional={**{f: VALUES for f in fields}, **extra}
    )
    return st.one_of(*[typed] * 6, VALUES)


SHORT_TEXT = st.text(min_size=1, max_size=12)


def candidate_messages(hall: Hall) -> st.SearchStrategy[Any]:
    """Mostly plausible values (so messages reach the handlers), often wild ones."""
    plausible = {
        "access_code": st.sampled_from(hall.codes[:5] or ["X"]),
        "token": st.sampled_from(hall.tokens[:5] or ["X"]),
        "exam_id": st.just(hall.exam_id),
        "position": st.integers(-5, 1_000_005),
        "answered": st.integers(-5, 1_000_005),
        "t": st.floats(time.time() - 5000, time.time() + 100),
        "name": SHORT_TEXT, "detail": SHORT_TEXT, "command_id": SHORT_TEXT,
        "client_id": SHORT_TEXT, "resume_token": SHORT_TEXT,
    }
    return messages(CANDIDATE_TYPES, CANDIDATE_FIELDS,
                    {k: st.one_of(v, v, VALUES) for k, v in plausible.items()})


def proctor_messages(hall: Hall) -> st.SearchStrategy[Any]:
    plausible = {
        "exam_id": st.just(hall.exam_id),
        "action": st.sampled_from([a.value for a in Action]),
        "target": st.one_of(st.sampled_from(hall.session_ids[:5] or ["x"]), TARGETS),
        "last_seq": st.integers(-3, 50),
        "minutes": st.integers(-2, 2000),
        "text": SHORT_TEXT, "reason": SHORT_TEXT, "command_id": SHORT_TEXT,
        "request_id": st.one_of(st.integers(), SHORT_TEXT),
        "t": st.floats(allow_nan=False, allow_infinity=False),
    }
    return messages(PROCTOR_TYPES, PROCTOR_FIELDS,
                    {k: st.one_of(v, v, VALUES) for k, v in plausible.items()})


def encode(message: Any, protocol: str) -> bytes | str | None:
    """The frame for `message`; None when the codec cannot even write it (e.g. 2**64 as JSON
    is fine, in msgpack it is not)."""
    if protocol == MSGPACK:
        try:
            frame: bytes = msgpack.packb(message, use_bin_type=True)
            return frame
        except (OverflowError, ValueError, TypeError):
            return None
    return json.dumps(message, default=lambda b: b.decode("latin-1"))  # NaN/Infinity as-is


GARBAGE = st.one_of(st.binary(max_size=64), st.text(max_size=64),
                    st.sampled_from([b"\xc1", b"\x91" * 40, "{", "[" * 3000, "\x00", ""]))


def frames(message_strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[list[Any]]:
    message = message_strategy.map(lambda m: ("message", m))
    wrapped = st.one_of(*[message] * 6, GARBAGE.map(lambda g: ("raw", g)))
    return st.lists(wrapped, min_size=1, max_size=6)


class Peer:
    """One fuzzed socket: sends frames, then a sentinel it must see answered (or a documented
    close), so a crash anywhere in between shows."""

    sentinels = itertools.count()

    def __init__(self, server: ServerProcess, path: str, protocol: str, **kwargs: Any) -> None:
        self.protocol = protocol
        self._stack = contextlib.ExitStack()
        self.ws: ClientConnection = self._stack.enter_context(connect(
            f"{server.ws_url}{path}", subprotocols=[protocol],  # type: ignore[list-item]
            max_size=8 * 1024 * 1024, ping_interval=None, **kwargs,
        ))
        self.closed: int | None = None

    def send(self, kind: str, payload: Any) -> None:
        frame = encode(payload, self.protocol) if kind == "message" else payload
        if frame is None or self.closed is not None:
            return
        try:
            self.ws.send(frame)
        except ConnectionClosed as exc:
            self.closed = self._code(exc)

    def _code(self, exc: ConnectionClosed) -> int:
        code = exc.rcvd.code if exc.rcvd else 1006
        assert code in DOCUMENTED_CLOSES, f"closed with {code}: {exc}"
        return code

    def decode(self, frame: bytes | str) -> dict[str, Any]:
        if isinstance(frame, bytes):
            assert self.protocol == MSGPACK
            message: dict[str, Any] = msgpack.unpackb(frame, raw=False)
            return message

        assert self.protocol == JSON
        message = strict_json(frame)
        return message

    def sync(self, sentinel_field: str) -> None:
        """Send a sentinel message and read until its answer or a documented close."""
        if self.closed is not None:
            return
        mark = f"sentinel-{next(self.sentinels)}"
        probe = {"type": mark} if sentinel_field == "type" else {
            "type": "sentinel", sentinel_field: mark}
        try:
            self.ws.send(encode(probe, self.protocol))  # type: ignore[arg-type]
            deadline = time.monotonic() + REPLY_TIMEOUT
            while True:
                message = self.decode(self.ws.recv(timeout=deadline - time.monotonic()))
                if message.get("type") == "ping":
                    self.ws.send(encode({"type": "pong", "t": message["t"]}, self.protocol))  # type: ignore[arg-type]
                    continue
                assert message.get("code") != "internal", message
                if message.get("type") == "error" and (
                    mark in message.get("message", "") or message.get("request_id") == mark
                ):
                    return
        except ConnectionClosed as exc:
            self.closed = self._code(exc)

    def close(self) -> None:
        self._stack.close()


def assert_server_fine(hall: Hall) -> None:
    server = hall.server
    assert httpx.get(f"{server.url}/healthz", timeout=10).status_code == 200
    log = server.log()
    assert "Traceback" not in log and "ERROR" not in log, log[-4000:]


def assert_bystander_unaffected(hall: Hall) -> None:
    """The other exam's candidate still gets commands and its progress still counts."""
    exam, session = hall.bystander_exam, hall.bystander["id"]
    marker = int(time.time()) % 1000 + 1
    hall._bystander_ws.send(json.dumps({"type": "progress", "position": marker, "answered": 1}))
    response = hall.http.post(f"/api/v1/exams/{exam}/commands",
                              json={"action": "notice", "target": session, "text": "still?"})
    assert response.status_code == 200 and response.json()["applied"], response.text
    assert hall.bystander_gets("command")["action"] == "notice"
    stored = hall.http.get(f"/api/v1/exams/{exam}/sessions/{session}").json()
    assert stored["connected"] is True and stored["status"] == "active", stored


# -- the fuzzers -------------------------------------------------------------------------------


def fuzz_socket(
    hall: Hall,
    open_socket: Callable[[], Peer],
    messages: st.SearchStrategy[Any],
    lead: Callable[[], dict[str, Any]],
    lead_on_a_fresh_socket: bool,
    sync_on: str,
) -> None:
    """Batches of generated `messages` on a socket (`open_socket`), each ended by a sentinel
    answered on `sync_on`: error frames or documented closes, never a crash, and the other
    exam unaffected. An example may start with the message `lead` makes: on a fresh socket if
    `lead_on_a_fresh_socket`, else on the one open. A socket the server closed is replaced."""
    peer: list[Peer | None] = [None]

    @FUZZ
    @given(leads=st.booleans(), batch=frames(messages))
    def run(leads: bool, batch: list[Any]) -> None:
        current = peer[0]
        if current is None or current.closed is not None or (leads and lead_on_a_fresh_socket):
            if current is not None:
                current.close()
            current = peer[0] = open_socket()
        if leads:
            current.send("message", lead())
        for kind, payload in batch:
            current.send(kind, payload)
        current.sync(sync_on)
        hall.views_load()

    try:
        run()
    finally:
        if peer[0] is not None:
            peer[0].close()
    assert_server_fine(hall)
    assert_bystander_unaffected(hall)


@pytest.mark.parametrize("protocol", [JSON, MSGPACK])
def test_fuzz_candidate_socket(hall: Hall, protocol: str) -> None:
    """Generated frames on /ws/candidate, on a fresh socket that opens a session or on the one
    open: error frames or documented closes, never a crash."""
    fuzz_socket(
        hall,
        lambda: Peer(hall.server, "/ws/candidate", protocol),
        candidate_messages(hall),
        lead=lambda: {"type": "open", "access_code": hall.fresh_code()},
        lead_on_a_fresh_socket=True,
        sync_on="type",
    )


@pytest.mark.parametrize("protocol", [JSON, MSGPACK])
def test_fuzz_proctor_socket(hall: Hall, protocol: str) -> None:
    """Generated frames on /ws/proctor, subscribed to the exam or not: error frames or
    documented closes, never a crash."""
    fuzz_socket(
        hall,
        lambda: Peer(hall.server, "/ws/proctor", protocol, additional_headers=AUTH),
        proctor_messages(hall),
        lead=lambda: {"type": "subscribe", "exam_id": hall.exam_id},
        lead_on_a_fresh_socket=False,
        sync_on="request_id",
    )


@pytest.mark.timeout(300)  # every operation of a growing API, on two busy cores
def test_fuzz_rest_api_from_its_openapi_document(hall: Hall) -> None:
    """Every operation of the OpenAPI document, with schema-conforming and violating input
    (schemathesis), as a staff user: never a 5xx."""
    server = hall.server
    schema = schemathesis.openapi.from_url(f"{server.url}/api/v1/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 30
    real_ids = {"exam_id": hall.exam_id, "session_id": hall.session_ids[-1],
                "user_id": hall.user_id, "login": "guest1"}
    failures: list[str] = []
    for operation in operations:
        names = {p.name for p in operation.path_parameters}
        variants: list[tuple[GenerationMode, dict[str, str] | None, int]] = [
            (GenerationMode.POSITIVE, None, 4), (GenerationMode.NEGATIVE, None, 4)]
        if names:  # random ids mostly meet a 404: also go past it with ids that exist
            known = {n: real_ids[n] for n in names if n in real_ids}
            variants.append((GenerationMode.POSITIVE, known, 5))
        for mode, path_parameters, examples in variants:

            @settings(FUZZ, max_examples=examples)
            @given(case=operation.as_strategy(generation_mode=mode,
                                              path_parameters=path_parameters))
            def call(case: Any) -> None:
                response = case.call(base_url=server.url, headers=AUTH, timeout=30)
                if response.status_code >= 500:
                    failures.append(f"{response.status_code} {case.as_curl_command()}\n"
                                    f"  -> {response.text[:300]}")

            try:
                call()
            except Unsatisfiable:  # nothing of this operation can violate the schema
                assert mode is GenerationMode.NEGATIVE, operation.label
    assert not failures, "\n".join(failures[:20])
    assert_server_fine(hall)
    assert_bystander_unaffected(hall)
