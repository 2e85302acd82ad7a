"""Locust scenario: exam halls full of candidates, their proctors and one supervisor.

    locust -f loadtests/locustfile.py --headless -u 606 -r 50 -t 60s \
        --csv bench-results/locust/hall --host http://127.0.0.1:8000

Users: `--proctors-per-hall` proctors per hall (default 3) and one supervisor; every other user
of `-u` is a candidate (so `-u 910` = 3 halls of 300 candidates + 9 proctors + 1 supervisor).

* `CandidateUser` opens its session with an access code on `/ws/candidate`, answers pings,
  reports progress (and now and then a client event) every `--candidate-wait` seconds, acks
  every command and records the command's latency (server event time `at` -> received here) as
  request type `WS-CMD`, name `command <action>`.
* `ProctorUser` watches its hall's dashboard socket, records each delta's latency (`WS-DELTA`)
  and issues pause/resume/lock/unlock/authorize/notice every `--proctor-wait` seconds, over the
  socket (`WS proctor <action>`, timed to its `command_result`) or REST (`REST <action>`).
* `SupervisorUser` (exactly one) sends bulk commands by filter over REST (`REST bulk ...`).

The halls come from `--plan FILE` (written by `python -m loadtests.setup`), or are created at
test start on the first host (`--halls`, `--hall-size`). `--hosts a,b` spreads the users over
several servers (they must share one Redis state store). Only ever point this at servers you run.
"""

from __future__ import annotations

import itertools
import json
import logging
import random
import time
import uuid
from pathlib import Path
from typing import Any

import gevent
import websocket
from locust import User, events, task
from locust.clients import HttpSession
from locust.env import Environment
from locust.exception import StopUser
from locust.runners import MasterRunner, WorkerRunner

from loadtests.common import JSON, MSGPACK, decode, encode, split_hosts, staff_token, ws_url
from loadtests.setup import close_exams, create_plan
from loadtests.verdict import judge

log = logging.getLogger("loadtests")

FINAL_CLOSE_CODES = {4100, 4101, 4102, 4103, 4401, 4403, 4406}


class Scenario:
    """The halls, hosts and knobs of this locust process (filled in at test start)."""

    def __init__(self) -> None:
        self.plan: dict[str, Any] | None = None
        self.hosts: list[str] = []
        self.token = ""
        self.protocol = MSGPACK
        self.candidate_wait = (8.0, 20.0)
        self.proctor_wait = (5.0, 15.0)
        self.supervisor_wait = (20.0, 40.0)
        self.rest_share = 0.3
        self.created = False  # the halls were made by this run (and are closed at its end)
        self.candidates = itertools.count()
        self.proctors = itertools.count()

    @property
    def halls(self) -> list[dict[str, Any]]:
        if self.plan is None:
            raise StopUser()
        halls: list[dict[str, Any]] = self.plan["halls"]
        return halls

    def host(self, index: int) -> str:
        return self.hosts[index % len(self.hosts)]


SCENARIO = Scenario()


def _pair(raw: str) -> tuple[float, float]:
    low, _, high = raw.partition(",")
    return float(low), float(high or low)


@events.init_command_line_parser.add_listener
def _arguments(parser: Any) -> None:
    group = parser.add_argument_group("realtime scenario")
    group.add_argument("--plan", default="", env_var="LOCUST_PLAN",
                       help="JSON plan from `python -m loadtests.setup` (else halls are created)")
    group.add_argument("--hosts", default="", env_var="LOCUST_HOSTS",
                       help="comma-separated server URLs to spread users over (default --host)")
    group.add_argument("--staff-token", default="", env_var="LOCUST_STAFF_TOKEN",
                       help="staff bearer token (default $REALTIME_STAFF_TOKEN)")
    group.add_argument("--halls", type=int, default=3, env_var="LOCUST_HALLS")
    group.add_argument("--hall-size", type=int, default=300, env_var="LOCUST_HALL_SIZE")
    group.add_argument("--proctors-per-hall", type=int, default=3, env_var="LOCUST_PROCTORS",
                       help="proctor users per hall (the rest of -u, less one supervisor, "
                       "are candidates)")
    group.add_argument("--plan-out", default="", help="write the created plan here")
    group.add_argument("--protocol", default="msgpack", choices=["msgpack", "json"])
    group.add_argument("--candidate-wait", default="8,20", env_var="LOCUST_CANDIDATE_WAIT",
                       help="seconds between a candidate's reports: min,max")
    group.add_argument("--proctor-wait", default="5,15", env_var="LOCUST_PROCTOR_WAIT",
                       help="seconds between a proctor's commands: min,max")
    group.add_argument("--supervisor-wait", default="20,40", env_var="LOCUST_SUPERVISOR_WAIT",
                       help="seconds between bulk commands: min,max")
    group.add_argument("--rest-share", type=float, default=0.3,
                       help="share of proctor commands sent over REST instead of the socket")
    group.add_argument("--max-failure-ratio", type=float, default=0.01,
                       help="the run fails above this share of failed requests (0.01)")
    group.add_argument("--max-command-p95-ms", type=float, default=1000.0,
                       help="the run fails when the 95th percentile of command latency "
                       "(WS-CMD) is above this (1000 ms)")
    group.add_argument("--keep-exams", action="store_true",
                       help="leave the exams this run created (default: close them at the end)")


@events.init.add_listener
def _init(environment: Environment, **_kwargs: Any) -> None:
    """Proctors are a fixed number per hall; candidates take the rest of the users."""
    options = environment.parsed_options
    if options is None:
        return
    halls = options.halls
    if options.plan:
        halls = len(json.loads(Path(options.plan).read_text())["halls"])
    ProctorUser.fixed_count = max(0, halls * options.proctors_per_hall)


@events.test_start.add_listener
def _test_start(environment: Environment, **_kwargs: Any) -> None:
    if isinstance(environment.runner, MasterRunner):
        return  # workers create or load their own halls
    options = environment.parsed_options
    scenario = SCENARIO
    scenario.hosts = split_hosts(getattr(options, "hosts", "") or environment.host)
    if not scenario.hosts:
        raise SystemExit("give --host or --hosts")
    scenario.token = staff_token(getattr(options, "staff_token", "") or None)
    scenario.protocol = JSON if getattr(options, "protocol", "msgpack") == "json" else MSGPACK
    scenario.candidate_wait = _pair(options.candidate_wait)
    scenario.proctor_wait = _pair(options.proctor_wait)
    scenario.supervisor_wait = _pair(options.supervisor_wait)
    scenario.rest_share = options.rest_share
    if scenario.plan is not None:
        return
    if options.plan:
        scenario.plan = json.loads(Path(options.plan).read_text())
    else:
        started = time.perf_counter()
        scenario.plan = create_plan(
            scenario.hosts[0], scenario.token, options.halls, options.hall_size
        )
        scenario.created = True
        log.info("created %d halls of %d in %.1fs", options.halls, options.hall_size,
                 time.perf_counter() - started)
        if options.plan_out:
            Path(options.plan_out).parent.mkdir(parents=True, exist_ok=True)
            Path(options.plan_out).write_text(json.dumps(scenario.plan, indent=1))


@events.test_stop.add_listener
def _test_stop(environment: Environment, **_kwargs: Any) -> None:
    """Close the exams this run created (not those of a --plan), unless --keep-exams."""
    if isinstance(environment.runner, MasterRunner):
        return
    options = environment.parsed_options
    scenario = SCENARIO
    if scenario.plan is None or not scenario.created or getattr(options, "keep_exams", False):
        return
    exam_ids = [h["exam_id"] for h in scenario.plan["halls"]]
    for line in close_exams(scenario.hosts[0], scenario.token, exam_ids):
        log.info("%s", line)
        print(line, flush=True)
    scenario.plan, scenario.created = None, False


@events.quitting.add_listener
def _quitting(environment: Environment, **_kwargs: Any) -> None:
    """One line that says whether the run passed, and exit status 1 when it did not."""
    if isinstance(environment.runner, WorkerRunner) or environment.parsed_options is None:
        return
    options = environment.parsed_options
    verdict = judge(environment.stats, options.max_failure_ratio, options.max_command_p95_ms)
    print(verdict.line, flush=True)
    if not verdict.passed:
        environment.process_exit_code = 1


class SocketUser(User):
    """A user with one WebSocket, read by its own greenlet."""

    abstract = True
    path = ""

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        self.ws: websocket.WebSocket | None = None
        self.reader: gevent.Greenlet | None = None
        self.base = ""
        self.closed_by_us = False
        self.close_code: int | None = None

    def fire(self, kind: str, name: str, started: float | None = None, *,
             response_time: float | None = None, length: int = 0,
             exception: BaseException | None = None) -> None:
        if response_time is None:
            response_time = (time.perf_counter() - (started or time.perf_counter())) * 1000
        self.environment.events.request.fire(
            request_type=kind, name=name, response_time=response_time,
            response_length=length, exception=exception, context={},
        )

    def connect(self, headers: list[str] | None = None) -> websocket.WebSocket:
        ws = websocket.create_connection(
            ws_url(self.base, self.path), subprotocols=[SCENARIO.protocol], header=headers or [],
            timeout=15, enable_multithread=True, skip_utf8_validation=True,
        )
        return ws

    def send(self, message: dict[str, Any]) -> int:
        assert self.ws is not None
        frame = encode(message, SCENARIO.protocol)
        if isinstance(frame, bytes):
            self.ws.send_binary(frame)
        else:
            self.ws.send(frame)
        return len(frame)

    def receive(self) -> tuple[dict[str, Any], int] | None:
        """The next message and its size, or None when the socket closed."""
        assert self.ws is not None
        while True:
            try:
                opcode, data = self.ws.recv_data()
            except (websocket.WebSocketException, OSError):
                return None
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                if len(data) >= 2:
                    self.close_code = int.from_bytes(data[:2], "big")
                return None
            if opcode == websocket.ABNF.OPCODE_TEXT:
                return decode(data.decode()), len(data)
            if opcode == websocket.ABNF.OPCODE_BINARY:
                return decode(data), len(data)

    def close(self) -> None:
        self.closed_by_us = True
        if self.ws is not None:
            try:
                self.ws.close(timeout=1)
            except Exception:
                self.ws.shutdown()
        if self.reader is not None:
            self.reader.kill(block=False)

    def on_stop(self) -> None:
        self.close()


class CandidateUser(SocketUser):
    """One candidate's browser tab."""

    weight = 100
    path = "/ws/candidate"

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        self.session: dict[str, str] = {}
        self.resume_token: str | None = None
        self.status = ""
        self.position = 0
        self.answered = 0
        self.final = False

    def wait_time(self) -> float:
        return random.uniform(*SCENARIO.candidate_wait)

    def on_start(self) -> None:
        index = next(SCENARIO.candidates)
        halls = SCENARIO.halls
        hall = halls[index % len(halls)]
        slot = index // len(halls)
        if slot >= len(hall["sessions"]):
            log.warning("no session left for candidate %d: make the halls bigger", index)
            raise StopUser()
        self.session = hall["sessions"][slot]
        self.base = SCENARIO.host(index)
        self.open()
        # Spread the first reports over the wait interval, like people who sit down unevenly.
        gevent.sleep(random.uniform(0, SCENARIO.candidate_wait[0]))

    def open(self) -> bool:
        started = time.perf_counter()
        name = "open (resume)" if self.resume_token else "open"
        try:
            self.ws = self.connect()
            message: dict[str, Any] = {"type": "open", "access_code": self.session["access_code"],
                                       "client_id": "locust"}
            if self.resume_token:
                message["resume_token"] = self.resume_token
            self.send(message)
            while True:
                received = self.receive()
                if received is None:
                    raise ConnectionError("closed before opened")
                reply, size = received
                if reply["type"] == "ping":
                    self.send({"type": "pong", "t": reply["t"]})
                elif reply["type"] == "refused":
                    raise ConnectionRefusedError(f"refused: {reply.get('reason')}")
                elif reply["type"] == "opened":
                    break
        except Exception as exc:
            self.fire("WS", name, started, exception=exc)
            if self.ws is not None:
                self.ws.shutdown()
            self.ws = None
            return False
        self.fire("WS", name, started, length=size)
        self.resume_token = reply.get("resume_token") or self.resume_token
        self.status = reply["session"]["status"]
        self.position = reply["session"].get("position", 0)
        self.answered = reply["session"].get("answered", 0)
        self.ws.settimeout(None)
        self.closed_by_us = False
        self.reader = gevent.spawn(self.read_loop)
        return True

    def read_loop(self) -> None:
        while True:
            received = self.receive()
            if received is None:
                break
            message, size = received
            kind = message["type"]
            if kind == "ping":
                self.send({"type": "pong", "t": message["t"]})
            elif kind == "command":
                latency = max(0.0, (time.time() - float(message["at"])) * 1000)
                self.fire("WS-CMD", f"command {message['action']}", response_time=latency,
                          length=size)
                self.status = message.get("session", {}).get("status", self.status)
                self.send({"type": "ack", "command_id": message["command_id"]})
            elif kind == "error":
                problem = RuntimeError(f"{message.get('code')}: {message.get('message')}")
                self.fire("WS", f"error on {message.get('request', '?')}", response_time=0,
                          exception=problem)
            elif kind == "superseded":
                self.final = True
        code = self.close_code
        if code in FINAL_CLOSE_CODES:
            self.final = True
        if not self.closed_by_us:
            self.fire("WS", "closed by server", response_time=0,
                      exception=ConnectionError(f"close code {code}"))
            self.ws = None

    @task(10)
    def progress(self) -> None:
        if not self.ready():
            return
        self.position += 1
        if random.random() < 0.8:
            self.answered += 1
        started = time.perf_counter()
        size = self.send({"type": "progress", "position": self.position,
                          "answered": self.answered})
        self.fire("WS-SEND", "progress", started, length=size)

    @task(1)
    def client_event(self) -> None:
        if not self.ready():
            return
        started = time.perf_counter()
        name = random.choice(["focus_lost", "fullscreen_left", "copy"])
        size = self.send({"type": "client_event", "name": name, "detail": "locust"})
        self.fire("WS-SEND", "client_event", started, length=size)

    def ready(self) -> bool:
        """Connected (reconnecting with the resume token after a drop, as the page does)."""
        if self.final:
            return False
        if self.ws is None:
            return self.open()
        return True


class ProctorUser(SocketUser):
    """A proctor's dashboard: watches one hall and acts on single candidates."""

    weight = 1
    path = "/ws/proctor"

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        self.exam_id = ""
        self.sessions: dict[str, dict[str, Any]] = {}
        self.pending: dict[str, tuple[str, float]] = {}
        self.paused_by_me: dict[str, float] = {}
        self.http: HttpSession | None = None

    def wait_time(self) -> float:
        return random.uniform(*SCENARIO.proctor_wait)

    def on_start(self) -> None:
        index = next(SCENARIO.proctors)
        halls = SCENARIO.halls
        self.exam_id = halls[index % len(halls)]["exam_id"]
        self.base = SCENARIO.host(index)
        self.http = HttpSession(self.base, self.environment.events.request, self)
        self.http.headers["Authorization"] = f"Bearer {SCENARIO.token}"
        started = time.perf_counter()
        try:
            self.ws = self.connect([f"Authorization: Bearer {SCENARIO.token}"])
            self.send({"type": "subscribe", "exam_id": self.exam_id})
            while True:
                received = self.receive()
                if received is None:
                    raise ConnectionError("closed before the snapshot")
                reply, size = received
                if reply["type"] == "error":
                    raise RuntimeError(reply.get("message"))
                if reply["type"] == "snapshot":
                    break
        except Exception as exc:
            self.fire("WS", "subscribe", started, exception=exc)
            raise StopUser() from exc
        self.fire("WS", "subscribe", started, length=size)
        self.sessions = {s["id"]: s for s in reply["sessions"]}
        self.ws.settimeout(None)
        self.reader = gevent.spawn(self.read_loop)

    def read_loop(self) -> None:
        while True:
            received = self.receive()
            if received is None:
                break
            message, size = received
            kind = message["type"]
            if kind in ("event", "event_batch"):
                batch = [message["event"]] if kind == "event" else message["events"]
                now = time.time()
                for event in batch:
                    latency = max(0.0, (now - float(event["at"])) * 1000)
                    self.fire("WS-DELTA", "dashboard delta", response_time=latency,
                              length=size // len(batch))
                    session = self.sessions.get(event["session_id"])
                    if session is not None:
                        session.update(event.get("changes") or {})
            elif kind in ("command_result", "error"):
                pending = self.pending.pop(str(message.get("request_id")), None)
                if pending is None:
                    continue
                action, started = pending
                error = None
                if kind == "error":
                    error = RuntimeError(f"{message.get('code')}: {message.get('message')}")
                self.fire("WS", f"proctor {action}", started, length=size, exception=error)
        if not self.closed_by_us:
            self.fire("WS", "dashboard closed by server", response_time=0,
                      exception=ConnectionError("dashboard socket closed"))
            raise StopUser()

    def pick(self, **wanted: Any) -> str | None:
        found = [sid for sid, s in self.sessions.items()
                 if all(s.get(key) == value for key, value in wanted.items())]
        return random.choice(found) if found else None

    def command(self, action: str, target: str, **extra: Any) -> None:
        body = {"action": action, "target": target, **extra}
        if self.http is not None and random.random() < SCENARIO.rest_share:
            self.http.post(f"/api/v1/exams/{self.exam_id}/commands", json=body,
                           name=f"REST {action}")
            return
        request_id = uuid.uuid4().hex[:12]
        self.pending[request_id] = (action, time.perf_counter())
        self.send({"type": "command", "request_id": request_id, **body})

    @task(3)
    def authorize(self) -> None:
        sid = self.pick(status="awaiting")
        if sid:
            self.command("authorize", sid)
        else:
            self.notice()

    @task(3)
    def pause_or_resume(self) -> None:
        now = time.monotonic()
        due = [sid for sid, at in self.paused_by_me.items() if now - at > 5]
        if due:
            sid = random.choice(due)
            del self.paused_by_me[sid]
            if self.sessions.get(sid, {}).get("status") == "paused":
                self.command("resume", sid, reason="back from the restroom")
            return
        sid = self.pick(status="active", connected=True)
        if sid:
            self.paused_by_me[sid] = now
            self.command("pause", sid, reason="restroom")

    @task(2)
    def lock_or_unlock(self) -> None:
        sid = self.pick(connected=True)
        if sid is None:
            return
        locked = bool(self.sessions[sid].get("locked"))
        self.command("unlock" if locked else "lock", sid)

    @task(2)
    def notice(self) -> None:
        sid = self.pick(connected=True)
        if sid:
            self.command("notice", sid, text="Please keep your desk clear.")


class SupervisorUser(User):
    """The chief invigilator: bulk commands by filter over REST."""

    fixed_count = 1

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        self.http: HttpSession | None = None

    def wait_time(self) -> float:
        return random.uniform(*SCENARIO.supervisor_wait)

    def on_start(self) -> None:
        self.http = HttpSession(SCENARIO.host(0), self.environment.events.request, self)
        self.http.headers["Authorization"] = f"Bearer {SCENARIO.token}"

    def bulk(self, exam_id: str, name: str, body: dict[str, Any]) -> None:
        assert self.http is not None
        self.http.post(f"/api/v1/exams/{exam_id}/commands", json=body, name=f"REST bulk {name}")

    @task(2)
    def notice_everyone(self) -> None:
        for hall in SCENARIO.halls:
            self.bulk(hall["exam_id"], "notice all", {
                "action": "notice", "target": "all", "text": "30 minutes remaining"})

    @task(1)
    def pause_and_resume_hall(self) -> None:
        hall = random.choice(SCENARIO.halls)
        exam_id, group = hall["exam_id"], hall["group"]
        self.bulk(exam_id, "pause by filter", {
            "action": "pause", "target": {"status": "active", "group": group},
            "reason": "fire alarm test"})
        gevent.sleep(random.uniform(1.0, 3.0))
        self.bulk(exam_id, "resume by filter", {
            "action": "resume", "target": {"status": "paused", "group": group}})

    @task(1)
    def authorize_waiting(self) -> None:
        for hall in SCENARIO.halls:
            self.bulk(hall["exam_id"], "authorize waiting", {
                "action": "authorize", "target": {"status": "awaiting"}})
