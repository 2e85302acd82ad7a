"""Redis's own CPU time in commit_batch.lua, on a private Redis.

    python -m loadtests.commit_script_cpu --sessions 5000 --rounds 5
    python -m loadtests.commit_script_cpu --verify 2000 --dump replies.json

Runs a store's commits the way a server sends them and reads what Redis itself spent around
each run: the main thread's CPU time (`INFO cpu`, user + sys: Redis's own CPU, which other
work on the machine barely moves) and the EVALSHA time Redis counts (`INFO commandstats`).
To compare two versions of the script (and of the store that calls it), run this file with
each tree on PYTHONPATH in turn, alternated:

    PYTHONPATH=<tree> python <this tree>/loadtests/commit_script_cpu.py ...

Work, per round:

* bulk: a "pause all" then a "resume all" of N sessions through `SessionService.command` on a
  served exam (decided on the process's copy: N compare-and-sets with a command id, and the
  member count), as a server sends them;
* acks: N guarded commits (mode 'g': the holder's `conn_id` as guard, as a candidate's ack),
  256 per store call, as the batcher groups a hall's acks;
* targeted: N compare-and-sets with a command id each (targeted commands decided on the
  copy), 64 per store call.

`--verify K` instead runs K random batches of mixed commits (every mode, guards that hold or
not, versions right or wrong, sessions that do not exist, a session twice in one call, command
ids applied before or known) and prints a digest of every reply and of what Redis holds after
each batch (sessions, command records, seq, outbox entries): two trees that print the same
digest answered and wrote the same.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import random
import statistics
import time
from pathlib import Path
from typing import Any

import redis

from loadtests.servers import RedisProcess, workdir
from realtime.auth.permissions import ALL_PERMISSIONS
from realtime.auth.principal import Principal
from realtime.sessions import SessionService, Target
from realtime.state import machine
from realtime.state.model import Action, Event, Exam, new_session
from realtime.state.redis import RedisStore
from realtime.state.store import Commit

STAFF = Principal(id="bench", name="bench", kind="staff", permissions=ALL_PERMISSIONS)


class Meter:
    """What Redis spent between `start` and `stop`: main thread CPU, EVALSHA time and calls."""

    def __init__(self, url: str) -> None:
        self.client = redis.Redis.from_url(url)

    def _read(self) -> tuple[float, float, int]:
        cpu = self.client.info("cpu")
        stats = self.client.info("commandstats").get("cmdstat_evalsha", {})
        return (float(cpu["used_cpu_user_main_thread"]) + float(cpu["used_cpu_sys_main_thread"]),
                float(stats.get("usec", 0)), int(stats.get("calls", 0)))

    def start(self) -> None:
        self._at = self._read()

    def stop(self) -> tuple[float, float, int]:
        cpu, usec, calls = self._read()
        return 1000 * (cpu - self._at[0]), (usec - self._at[1]) / 1000, calls - self._at[2]


class Bench:
    def __init__(self, store: RedisStore, meter: Meter, sessions: int) -> None:
        self.store = store
        self.meter = meter
        self.sessions = sessions
        self.service = SessionService(store, db=None,  # type: ignore[arg-type]  # no rebuilds
                                      liveness=machine.Liveness(stale_after=15, resume_grace=60))
        self.calls = 0
        self.versions: dict[str, int] = {}

    async def setup(self, exam: str) -> None:
        await self.store.put_exam(Exam(id=exam, title="cpu"))
        await self.store.serve(exam)
        rows = [new_session(id=f"s{i}", exam_id=exam, candidate_id=f"c{i}",
                            access_code=f"{exam}{i:06d}", status="active", authorized=True,
                            conn_id=f"conn{i}", notice_id="n1")
                for i in range(self.sessions)]
        for start in range(0, self.sessions, 1000):
            await self.store.add_sessions(rows[start:start + 1000])

    async def bulk(self, exam: str) -> None:
        for action in (Action.PAUSE, Action.RESUME):
            self.calls += 1
            result = await self.service.command(exam, action, Target(all=True), STAFF,
                                                {"command_id": f"bulk{self.calls}"})
            if len(result.applied) != self.sessions:
                raise RuntimeError(f"{action.value} applied {len(result.applied)}")

    async def acks(self, exam: str) -> None:
        self.calls += 1
        commits = [Commit(exam, f"s{i}", None, {"last_seen": time.time(), "notice": "",
                                                "notice_id": ""},
                          [Event(exam_id=exam, session_id=f"s{i}", kind="delivered",
                                 actor=f"candidate:c{i}", at=time.time(),
                                 changes={"last_seen": 1.0}, details={"command_id": "n1"})],
                          guard={"conn_id": f"conn{i}"}, live_only=False)
                   for i in range(self.sessions)]
        for start in range(0, len(commits), 256):
            results = await self.store.commit(commits[start:start + 256])
            if not all(r.ok for r in results):
                raise RuntimeError("an ack was refused")

    async def prepare(self, exam: str) -> None:
        """What the targeted commits expect: the versions, read before the meter starts."""
        ids = [f"s{i}" for i in range(self.sessions)]
        self.versions = {s["id"]: s["version"] for s in await self.store.get_sessions(exam, ids)
                         if s is not None}

    async def targeted(self, exam: str) -> None:
        self.calls += 1
        ids = [f"s{i}" for i in range(self.sessions)]
        versions = self.versions
        commits = [Commit(exam, sid, versions[sid], {"status_command_id": f"t{self.calls}-{sid}"},
                          [Event(exam_id=exam, session_id=sid, kind="note", actor="proctor:1",
                                 at=time.time(), changes={})],
                          command_id=f"t{self.calls}-{sid}", fresh=True)
                   for sid in ids]
        for start in range(0, len(commits), 64):
            results = await self.store.commit(commits[start:start + 64])
            if not all(r.ok for r in results):
                raise RuntimeError("a targeted commit was refused")


async def measure(url: str, sessions: int, rounds: int) -> dict[str, Any]:
    store = RedisStore(url, prefix="cpu:")
    await store.start()
    meter = Meter(url)
    bench = Bench(store, meter, sessions)
    figures: dict[str, list[tuple[float, float, int]]] = {
        work: [] for work in ("bulk", "acks", "targeted")}
    try:
        await bench.setup("cpu")
        await bench.bulk("cpu")  # warm: script loaded, copy made
        for _ in range(rounds):
            for work in figures:
                if work == "targeted":
                    await bench.prepare("cpu")
                meter.start()
                await getattr(bench, work)("cpu")
                figures[work].append(meter.stop())
    finally:
        await store.close()
    return summarise(figures)


def summarise(figures: dict[str, list[tuple[float, float, int]]]) -> dict[str, Any]:
    """Per kind of work, `Meter.stop`'s figures of each run and their medians."""
    return {work: {"cpu_ms": [round(r[0], 2) for r in runs],
                   "cpu_ms_median": round(statistics.median(r[0] for r in runs), 2),
                   "evalsha_ms_median": round(statistics.median(r[1] for r in runs), 2),
                   "calls": runs[0][2]}
            for work, runs in figures.items()}


# -- verification --------------------------------------------------------------------------------

FIELDS = ("status", "conn_id", "notice_id", "last_seen", "locked")
VALUES: dict[str, list[Any]] = {"status": ["active", "paused", "completed", "terminated"],
                                "conn_id": ["", "c1", "c2"], "notice_id": ["", "n1"],
                                "last_seen": [1.0, 2.0], "locked": [False, True]}


def random_batch(rng: random.Random, exam: str, versions: dict[str, int], members: int,
                 rnd: int) -> list[Commit]:
    commits: list[Commit] = []
    for _ in range(rng.randint(1, 12)):
        sid = f"s{rng.randint(0, 7)}"  # s6, s7 never exist
        mode = rng.choice("vvvggrcn")
        cmd = rng.choice(["", "", "k1", "k2", f"k{rnd}"])
        fresh = bool(cmd) and rng.random() < 0.4
        expected = versions.get(sid, 0) + rng.choice([0, 0, 0, -1, 1])
        guard = ({name: rng.choice(VALUES[name]) for name in rng.sample(FIELDS, rng.randint(0, 2))}
                 if mode in "vg" and rng.random() < 0.6 else None)
        if mode == "g" and guard is None:
            guard = {}
        changes = {name: rng.choice(VALUES[name])
                   for name in rng.sample(FIELDS, rng.randint(0, 3))}
        events = [Event(exam_id=exam, session_id=sid, kind=f"k{n}", actor="a", at=1.0,
                        changes=dict(changes)) for n in range(rng.choice([0, 1, 1, 2]))]
        live_only = rng.random() < 0.5
        if mode == "n":
            commits.append(Commit(exam, "", None, members=members + rng.choice([0, 0, 1]),
                                  command_id=cmd, fresh=fresh))
        elif mode == "c":
            commits.append(Commit(exam, sid, expected, check_only=True, command_id=cmd,
                                  fresh=fresh))
        else:
            commits.append(Commit(exam, sid, expected if mode == "v" else None, changes, events,
                                  guard=guard, live_only=live_only, command_id=cmd, fresh=fresh))
    return commits


async def state(store: RedisStore, exam: str) -> list[Any]:
    """What Redis holds of the exam, comparable across runs (no times): its sessions, command
    records, seq and last outbox entry (a batch appends at most one)."""
    client = store._client
    keys = store.keys

    def text(mapping: dict[bytes, bytes]) -> list[list[str]]:
        return sorted([k.decode(), v.decode()] for k, v in mapping.items())

    sessions = [text(await client.hgetall(keys.session(exam, f"s{i}"))) for i in range(8)]
    commands = [text(await client.hgetall(keys.command(exam, c))) for c in ("k1", "k2")]
    outbox = [[entry.decode().split("-")[0], fields[b"n"].decode(), fields[b"d"].hex()]
              for entry, fields in await client.xrevrange(keys.outbox(exam), count=1)]
    seq = await client.get(keys.seq(exam))
    return [sessions, commands, seq.decode() if seq else None, outbox]


async def verify(url: str, batches: int, seed: int) -> list[Any]:
    store = RedisStore(url, prefix="verify:")
    await store.start()
    record: list[Any] = []
    try:
        await store.add_sessions([new_session(id=f"s{i}", exam_id="v", access_code=f"v{i}",
                                              status="active", conn_id="c1", notice_id="n1")
                                  for i in range(6)])
        rng = random.Random(seed)
        for rnd in range(batches):
            sessions = await store.get_sessions("v", [f"s{i}" for i in range(6)])
            versions = {s["id"]: s["version"] for s in sessions if s is not None}
            results = await store.commit(random_batch(rng, "v", versions, 6, rnd))
            record.append([[r.ok, r.found, r.guard_failed, r.duplicate_seq, r.known,
                            [[e.seq, e.kind, e.changes] for e in r.events]] for r in results])
            if rng.random() < 0.2:  # an answer kept for a command id
                await store.save_command_result("v", rng.choice(["k1", "k2"]), {})
            record.append(await state(store, "v"))
    finally:
        await store.close()
    return record


async def run(args: argparse.Namespace) -> dict[str, Any]:
    server = RedisProcess(workdir("rt-script-cpu-"))
    server.start()
    try:
        if args.verify:
            return {"record": await verify(server.url, args.verify, args.seed)}
        return await measure(server.url, args.sessions, args.rounds)
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=5, help="runs of each kind of work")
    parser.add_argument("--verify", type=int, default=0, help="random batches to record")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--dump", help="--verify: write the record (JSON) here too")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    args.rounds = max(1, min(args.rounds, 50))
    args.verify = max(0, min(args.verify, 100_000))
    result = asyncio.run(run(args))
    return report(result, args, "batches")


def report(result: dict[str, Any], args: argparse.Namespace, verified: str) -> int:
    """Prints a run's result: the digest of a `--verify` record (written to `--dump` too, if
    the tool has it), the figures as JSON (`--json`), or a line per kind of work."""
    if "record" in result:
        dump = json.dumps(result["record"], sort_keys=True)
        if getattr(args, "dump", None):
            Path(args.dump).write_text(dump)
        print(f"{args.verify} random {verified} (seed {args.seed}): digest "
              f"{hashlib.sha256(dump.encode()).hexdigest()}")
        return 0
    if args.json:
        print(json.dumps(result))
        return 0
    for work, row in result.items():
        print(f"{work}: Redis main-thread CPU per run {row['cpu_ms']} ms, median "
              f"{row['cpu_ms_median']} ms; EVALSHA median {row['evalsha_ms_median']} ms in "
              f"{row['calls']} calls")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
