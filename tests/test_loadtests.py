"""Smoke tests of the load tests: the locust scenario and the benchmark run end to end, small.

No timing is asserted: only that they run, measure what they promise and lose nothing.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from server import STAFF_TOKEN, ServerProcess

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.timeout(90)


def _run(command: list[str], timeout: float, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True,
        timeout=timeout, check=False,
    )


def test_locust_scenario_records_command_latency(tmp_path: Path) -> None:
    server = ServerProcess(workdir=tmp_path).start()
    try:
        result = _run(
            [
                sys.executable, "-m", "locust", "-f", str(ROOT / "loadtests" / "locustfile.py"),
                "--headless", "-u", "14", "-r", "14", "-t", "8s", "--stop-timeout", "2",
                "--csv", str(tmp_path / "hall"), "--host", server.url, "--only-summary",
                "--halls", "2", "--hall-size", "10", "--proctors-per-hall", "2",
                "--candidate-wait", "0.3,0.6", "--proctor-wait", "0.2,0.4",
                "--supervisor-wait", "0.5,1", "--plan-out", str(tmp_path / "plan.json"),
            ],
            timeout=60, REALTIME_STAFF_TOKEN=STAFF_TOKEN,
        )
        plan = json.loads((tmp_path / "plan.json").read_text())
        with httpx.Client(base_url=server.url, timeout=30,
                          headers={"Authorization": f"Bearer {STAFF_TOKEN}"}) as http:
            left = [s["status"] for h in plan["halls"]
                    for s in http.get(f"/api/v1/exams/{h['exam_id']}/sessions").json()["sessions"]]
            exams = [http.get(f"/api/v1/exams/{h['exam_id']}").json() for h in plan["halls"]]
    finally:
        server.stop()
    output = result.stdout[-3000:] + result.stderr[-3000:]
    assert result.returncode == 0, output
    # a verdict line, and the exams it made are cleaned up: archived (the server can), so
    # they leave the exam list
    assert "realtime load test: PASS: " in result.stdout, output
    assert result.stdout.count(": archived") == 2, output
    assert left, "the halls had sessions"
    assert [e["status"] for e in exams] == ["archived", "archived"], exams
    with (tmp_path / "hall_stats.csv").open() as f:
        rows = list(csv.DictReader(f))
    counts = {(r["Type"], r["Name"]): int(r["Request Count"]) for r in rows}
    commands = {name: n for (kind, name), n in counts.items() if kind == "WS-CMD"}
    assert commands and all(name.startswith("command ") for name in commands), counts
    assert sum(commands.values()) > 0, counts
    assert counts.get(("WS", "open"), 0) >= 9, counts  # 14 users - 4 proctors - 1 supervisor
    assert counts.get(("WS-DELTA", "dashboard delta"), 0) > 0, counts
    assert any(kind == "POST" and name.startswith("REST bulk") for kind, name in counts), counts
    assert all(int(r["Failure Count"]) == 0 for r in rows), output
    assert [len(h["sessions"]) for h in plan["halls"]] == [10, 10]


METRICS = {
    "open": ["n", "ok", "failed", "per_second", "p50_ms", "p99_ms", "max_ms", "snapshot_ms"],
    "hold": ["alive", "lost", "pings", "cpu_s_per_1000_msgs"],
    "memory": ["rss_base_mb", "rss_held_mb", "kib_per_conn"],
    "targeted": ["sent", "applied", "received", "lost", "p50_ms", "p99_ms", "max_ms"],
    "pause_all": ["applied", "received", "lost", "last_ms", "rest_ms", "dashboard_last_ms"],
    "resume_all": ["applied", "received", "lost", "last_ms"],
    "dashboard": ["sent", "received", "lost", "p50_ms", "p99_ms", "max_ms",
                  "cpu_s_per_1000_msgs"],
    "lock_open": ["ok", "failed", "relocked", "per_second", "p99_ms"],
    "lock_reopen": ["ok", "failed", "per_second", "p99_ms"],
}


def test_benchmark_smoke(tmp_path: Path) -> None:
    n = 20
    result = _run(
        [sys.executable, "-m", "loadtests.bench", "--sizes", str(n), "--configs",
         "memory:1,redis:2", "--quick", "--phases", "classic", "--out", str(tmp_path)],
        timeout=80,
    )
    output = result.stdout[-3000:] + result.stderr[-3000:]
    assert result.returncode == 0, output
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["machine"]["cpus"] >= 1
    assert [(r["config"], r["n"]) for r in data["runs"]] == [("memory:1", n), ("redis:2", n)]
    for run in data["runs"]:
        assert "error" not in run, run
        for phase, keys in METRICS.items():
            missing = [k for k in keys if run[phase].get(k) is None]
            assert not missing, (run["config"], phase, missing)
        assert run["lost_total"] == 0, run
        assert run["open"]["ok"] == n and run["hold"]["alive"] == n
        assert run["targeted"]["received"] == run["targeted"]["applied"] > 0
        assert run["pause_all"]["received"] == run["pause_all"]["applied"] == n
        assert run["dashboard"]["received"] == n
        assert run["lock_open"]["relocked"] == n
        assert run["lock_reopen"]["ok"] == n
        assert run["server_log_errors"] == 0, run
    assert (tmp_path / "bench.png").stat().st_size > 0


COMPARE = {
    "open": ["ok", "per_second"],
    "hold": ["alive", "lost"],
    "memory": ["kib_per_conn"],
    "throughput": ["steps", "lost", "max_sent_per_s"],
    "pause_repeats": ["repeats", "pause_last_p50_ms", "pause_last_parsed_p50_ms",
                      "pause_rest_p50_ms", "pause_harness_cpu_p50_ms", "applied", "received",
                      "lost"],
    "hall": ["progress_sent", "received", "lost", "p50_ms", "p99_ms", "progress_acks_per_s"],
}
STEP = ["rate_per_s", "sent", "applied", "received", "lost", "achieved_per_s", "p50_ms",
        "p99_ms", "rest_p50_ms", "rest_p99_ms"]


def test_benchmark_comparison_with_the_peer(tmp_path: Path) -> None:
    """The comparison phases on the real server and on the python-socketio peer, tiny."""
    n = 20
    summary = tmp_path / "SUMMARY.md"
    result = _run(
        [sys.executable, "-m", "loadtests.bench", "--sizes", str(n), "--configs", "memory:1",
         "--phases", "new", "--quick", "--compare-deflate", "--no-chart", "--out",
         str(tmp_path), "--summary", str(summary)],
        timeout=240,  # bounds a stuck run, not a speed check (~60 s alone, 80+ beside a busy suite)
    )
    output = result.stdout[-3000:] + result.stderr[-3000:]
    assert result.returncode == 0, output
    data = json.loads((tmp_path / "results.json").read_text())
    assert [(r["config"], r["n"]) for r in data["runs"]] == [("memory:1", n), ("peer:1", n)]
    for run in data["runs"]:
        assert "error" not in run, run
        for phase, keys in COMPARE.items():
            missing = [k for k in keys if run[phase].get(k) is None]
            assert not missing, (run["config"], phase, missing)
        assert "targeted" not in run and "lock_open" not in run  # classic phases not asked
        assert run["lost_total"] == 0, run
        assert run["open"]["ok"] == n and run["hold"]["alive"] == n
        steps = run["throughput"]["steps"]
        assert [s["rate_per_s"] for s in steps] == [50.0, 200.0]
        for step in steps:
            assert not [k for k in STEP if step.get(k) is None], step
            assert step["sent"] > 0 and step["received"] == step["applied"] == step["sent"]
        pauses = run["pause_repeats"]
        assert pauses["repeats"] == 2
        assert all(b["received"] == n for b in pauses["pause"] + pauses["resume"])
        # every socket (ours and the peer's) is read, and stamped, before it is parsed
        assert run["client_read"] == "read-first"
        assert all(b["last_ms"] <= b["last_parsed_ms"]
                   for b in pauses["pause"] + pauses["resume"]), pauses
        hall = run["hall"]
        assert hall["progress_sent"] == hall["received"] > 0
        assert hall["commands"]["received"] == hall["commands"]["applied"] > 0
        assert run["server_log_errors"] == 0, run
    deflate = data["deflate"]
    assert [(d["server_deflate"], d["deflate_offered"]) for d in deflate] == [
        ("on", True), ("on", False), ("off", True)]
    assert [d["negotiated"] for d in deflate] == [n, 0, 0]
    assert all(d["held"] == n and d["kib_per_conn"] is not None for d in deflate)
    assert "(peer " in result.stdout and "cheapest per connection" in result.stdout
    assert "pause-all last candidate parsed by the harness" in result.stdout
    assert "peer:1" in summary.read_text()


@pytest.mark.timeout(170)
def test_benchmark_spreads_rest_commands_over_the_servers(tmp_path: Path) -> None:
    """With two servers, the comparison phases send REST commands to both in turn (as a
    balancer would); `--rest-to first` keeps them all on the first. Each pause-all reports the
    server CPU it cost."""
    n = 10
    counts = {}
    for mode in ("all", "first"):
        out = tmp_path / mode
        result = _run(
            [sys.executable, "-m", "loadtests.bench", "--sizes", str(n), "--configs", "redis:2",
             "--phases", "throughput,pauses", "--no-peer", "--quick", "--no-chart",
             "--rest-to", mode, "--out", str(out)],
            timeout=80,
        )
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        [run] = json.loads((out / "results.json").read_text())["runs"]
        assert "error" not in run, run
        assert run["lost_total"] == 0, run
        assert all(b["server_cpu_ms"] is not None for b in run["pause_repeats"]["pause"])
        assert all(s["server_cpu_ms_per_command"] is not None for s in run["throughput"]["steps"])
        counts[mode] = [node.get("commands", 0) for node in run["fan_out"]]
    assert len(counts["all"]) == 2 and min(counts["all"]) > 0, counts
    assert counts["first"][0] > 0 and counts["first"][1] == 0, counts


@pytest.mark.parametrize("store", ["memory", "redis"])
def test_command_cpu_measures_the_command_path(store: str) -> None:
    """The in-process measurement applies every command it times (else it would time refusals)."""
    result = _run(
        [sys.executable, "-m", "loadtests.command_cpu", "--store", store, "--sessions", "40",
         "--bulk-repeats", "3", "--targeted", "10", "--concurrency", "4"],
        timeout=80,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"{store} N=40 K=4: pause/resume all CPU" in result.stdout
    assert "per command, median" in result.stdout


def test_command_cpu_with_history_times_each_round_until_it_is_in_sql() -> None:
    """With --history the server's audited service and a drainer to SQLite run; a paced round
    is timed until its history is written (else it fails: the outbox never empties)."""
    result = _run(
        [sys.executable, "-m", "loadtests.command_cpu", "--store", "redis", "--sessions", "40",
         "--bulk-repeats", "1", "--targeted", "20", "--concurrency", "4", "--rate", "100",
         "--history"],
        timeout=120,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "redis N=40 K=4: pause/resume all CPU" in result.stdout
    assert "per command, median" in result.stdout


@pytest.mark.parametrize("store", ["memory", "redis"])
def test_drain_cpu_times_a_steady_flow_until_the_drainer_has_written_it(store: str) -> None:
    """Each round is timed until the drainer has written every event and audit row (else it
    fails); the memory store's drainer never gathers longer than 50 ms, Redis's may."""
    result = _run(
        [sys.executable, "-m", "loadtests.drain_cpu", "--store", store, "--sessions", "20",
         "--rate", "200", "--seconds", "0.5", "--rounds", "2", "--audit"],
        timeout=120,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["store"] == store and summary["rounds"] == 1 and summary["audit"], summary
    assert summary["cpu_us_per_event_p50"] > 0 and summary["drain_rounds_p50"] >= 1, summary
    assert summary["max_gather"] == (0.25 if store == "redis" else 0.05), summary


@pytest.mark.parametrize("store", ["memory", "redis"])
def test_command_cpu_over_rest_posts_each_command_to_the_whole_app(store: str) -> None:
    """With --rest each command is a POST to the server's app (its own store, audited service
    and drainer): every one is answered 200 and applied, each round timed until it is in SQL."""
    result = _run(
        [sys.executable, "-m", "loadtests.command_cpu", "--store", store, "--sessions", "40",
         "--bulk-repeats", "1", "--targeted", "20", "--concurrency", "4", "--rate", "100",
         "--rest"],
        timeout=120,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"{store} rest N=40 K=4: pause/resume all CPU" in result.stdout
    assert "per command, median" in result.stdout


def test_commit_script_cpu_reads_redis_s_cost_and_records_replies() -> None:
    """Every commit it times applies (the harness fails otherwise), Redis's counters are read
    around each run, and a verification run is deterministic: the same digest twice."""
    result = _run(
        [sys.executable, "-m", "loadtests.commit_script_cpu", "--sessions", "300",
         "--rounds", "2"],
        timeout=80,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for work in ("bulk", "acks", "targeted"):
        assert f"{work}: Redis main-thread CPU per run" in result.stdout
    digests = []
    for _ in range(2):
        verified = _run([sys.executable, "-m", "loadtests.commit_script_cpu", "--verify", "100"],
                        timeout=80)
        assert verified.returncode == 0, verified.stdout[-3000:] + verified.stderr[-3000:]
        assert "100 random batches (seed 1): digest " in verified.stdout
        digests.append(verified.stdout.split("digest ")[1].strip())
    assert digests[0] == digests[1]


def test_heartbeat_script_cpu_reads_redis_s_cost_and_records_replies() -> None:
    """Every touch and sweep it times answers as the exam's states say (the harness fails
    otherwise), Redis's counters are read around each run, and a verification run is
    deterministic: the same digest twice."""
    result = _run(
        [sys.executable, "-m", "loadtests.heartbeat_script_cpu", "--sessions", "300",
         "--rounds", "2"],
        timeout=80,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for work in ("touch", "sweep", "sweep-dead"):
        assert f"{work}: Redis main-thread CPU per run" in result.stdout
    digests = []
    for _ in range(2):
        verified = _run([sys.executable, "-m", "loadtests.heartbeat_script_cpu", "--verify",
                         "100"], timeout=80)
        assert verified.returncode == 0, verified.stdout[-3000:] + verified.stderr[-3000:]
        assert "100 random rounds (seed 1): digest " in verified.stdout
        digests.append(verified.stdout.split("digest ")[1].strip())
    assert digests[0] == digests[1]


def test_audited_answer_times_commands_through_the_audited_service() -> None:
    result = _run(
        [sys.executable, "-m", "loadtests.audited_answer", "--commands", "20", "--sessions",
         "300", "--bulk", "1"],
        timeout=80,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "targeted answer p50 " in result.stdout
    assert "Redis round trips per command; notice to all 300 " in result.stdout


def test_redis_tail_times_the_sweep_the_copy_and_the_drain() -> None:
    """The in-process Redis tail measurement: every kind of work runs and is reported, the
    Redis calls it made counted."""
    result = _run(
        [sys.executable, "-m", "loadtests.redis_tail", "--sessions", "600", "--repeats", "1",
         "--drain-events", "3000"],
        timeout=80,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "600 sessions, 1 repeats" in result.stdout
    lines = {line.split()[0]: line for line in result.stdout.splitlines()[1:]}
    assert set(lines) == {"stale_holders", "copy", "drain:claim", "drain:ack"}
    for line in lines.values():
        assert "redis_calls 0.0" not in line and "probe_worst_ms" in line


def test_fanout_cpu_times_a_pause_all_reaching_every_socket() -> None:
    """The in-process fan-out measurement: every repeat reaches every candidate socket (it
    waits for the last, else it fails), and the summary names its figures."""
    result = _run(
        [sys.executable, "-m", "loadtests.fanout_cpu", "--sessions", "30", "--repeats", "3",
         "--floor"],
        timeout=120,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["sessions"] == 30 and summary["repeats"] == 2, summary
    for key in ("command_ms_p50", "fanout_ms_p50", "total_ms_p50", "last_ms_p50", "floor_ms",
                "fanout_us_per_frame", "rss_kib_per_conn", "answer_ms_p50",
                "first_frame_ms_p50", "last_frame_ms_p50"):
        assert summary[key] > 0, summary
    assert summary["last_frame_ms_p50"] >= summary["first_frame_ms_p50"], summary
    assert "evalsha_ms_p50" not in summary  # Redis's own figures: on Redis only
    assert "transport.write x 30" in result.stdout
    # the server's WebSocket implementation, as `realtime serve` runs it
    assert summary["ws_impl"] == "websockets-sansio", summary
    assert summary["served_by"] == "WebSocketsSansIOProtocol", summary


def test_hub_fanout_splits_a_frame_s_cpu_between_the_hub_and_the_socket_write() -> None:
    """The hub's fan-out with real sockets, and without them (no-op transports), and the bare
    writes of the same frames: every variant measured; the harness itself fails if the hub's
    frames did not all go to the transport directly."""
    result = _run(
        [sys.executable, "-m", "loadtests.hub_fanout", "--sessions", "20", "--rounds", "1",
         "--versions", "mixed"],
        timeout=120,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["sessions"] == 20 and summary["versions"] == "mixed", summary
    assert set(summary["us_per_frame"]) == {"hub", "hub, no-op transport", "transport.write",
                                            "no-op write"}, summary
    assert summary["us_per_frame"]["hub"] > 0, summary  # (a no-op write may round to 0)
    assert summary["entry"] == "event", summary


def test_hub_fanout_hands_the_hub_a_batch_as_a_redis_stores_own_commit() -> None:
    """`--entry committed`: the events in one `Hub.on_committed` call; every frame is still
    written directly (the harness fails otherwise)."""
    result = _run(
        [sys.executable, "-m", "loadtests.hub_fanout", "--sessions", "20", "--rounds", "1",
         "--entry", "committed"],
        timeout=120,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["entry"] == "committed" and summary["us_per_frame"]["hub"] > 0, summary


@pytest.mark.parametrize("entry", ["committed", "event"])
def test_hub_instructions_times_the_hubs_path_on_uvicorns_protocol_objects(entry: str) -> None:
    """The in-process harness: uvicorn's real protocols over discarding transports, every
    frame written directly and each socket's frame its own message (it fails otherwise)."""
    result = _run(
        [sys.executable, "-m", "loadtests.hub_instructions", "--sockets", "30", "--rounds", "2",
         "--entry", entry, "--versions", "mixed"],
        timeout=120,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["sockets"] == 30 and summary["entry"] == entry, summary
    assert summary["us_per_frame"] > 0, summary


def test_fanout_cpu_timeline_on_redis_with_acks() -> None:
    """`--timeline` prints, per repeat, the answer, the child's first frame, when it read and
    parsed the last (`--client-read read-first`: every socket read before any is parsed) and
    its CPU meanwhile, and what ran on the loop meanwhile (the bulk commit, the fan-out,
    marked `*` when it started before the last frame); `--store redis` runs the server on a
    private Redis."""
    result = _run(
        [sys.executable, "-m", "loadtests.fanout_cpu", "--sessions", "30", "--repeats", "3",
         "--acks", "--timeline", "--store", "redis", "--client-read", "read-first",
         "--commit-chunk", "0,4", "--gap", "0.6"],
        timeout=120,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["sessions"] == 30
    # Redis's own figures up to the answer: the bulk commit's script call(s) and its CPU
    assert summary["evalsha_calls_p50"] >= 1 and summary["evalsha_ms_p50"] > 0, summary
    assert summary["redis_cpu_ms_p50"] >= 0 and summary["answer_ms_p50"] > 0, summary
    assert "EVALSHA" in result.stdout and "last frame" in result.stdout
    timelines = [line for line in result.stdout.splitlines() if "timeline " in line]
    assert len(timelines) == 3, timelines
    # `--commit-chunk 0,4`: two repeats in one call, then one in chunks of 4 (8 calls)
    assert "[chunk 0]" in result.stdout and "[chunk 4]" in result.stdout
    by_chunk = summary["by_chunk"]
    assert by_chunk["4"]["evalsha_calls_p50"] >= 8 > by_chunk["0"]["evalsha_calls_p50"], summary
    assert all("last frame read" in line and ", parsed " in line and "child's CPU" in line
               for line in timelines), timelines
    assert "* " in result.stdout and "store commit x" in result.stdout
    # `--gap`: the next repeat does not wait for the drain; what of the drainer ran between
    # the call and the server's last frame, on the loop and in the SQL driver's thread
    assert result.stdout.count("the drainer from the call to the server's last frame") == 3
    assert "backlog " in result.stdout and "(loop " in result.stdout
    for key in ("loop_ms_p50", "drain_loop_ms_p50", "drain_sql_ms_p50", "drain_held_s"):
        assert key in summary, summary


@pytest.mark.parametrize("store", ["memory", "redis"])
def test_conn_memory_says_where_an_idle_socket_s_memory_goes(store: str) -> None:
    """The in-process measurement of memory per idle candidate socket: every socket is
    opened and held (else it fails); RSS, heap and the frozen garbage per socket, and with
    `--trace` the bytes by holder and by line, uvicorn's protocol object among them."""
    result = _run(
        [sys.executable, "-m", "loadtests.conn_memory", "--sessions", "30", "--hold", "0.5",
         "--store", store, *(["--trace"] if store == "memory" else [])],
        timeout=120,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["sessions"] == 30 and summary["store"] == store, summary
    for key in ("rss_kib_per_conn", "rss_kib_per_conn_collected"):
        assert isinstance(summary[key], float), summary
    assert summary["objects_total_per_conn"] > 0, summary
    assert {"held", "frozen_garbage_per_conn", "frozen_garbage_types"} <= set(summary["frozen"])
    assert "RSS" in result.stdout and "frozen by the policy" in result.stdout
    if store == "memory":
        holders = {row["holder"]: row["bytes_per_conn"] for row in summary["traced"]["by_holder"]}
        assert holders["uvicorn WebSocket protocol"] > 0, holders
        assert summary["traced"]["by_line"], summary["traced"]
        assert "by line:" in result.stdout
    else:
        assert "traced" not in summary
        assert summary["heap_kib_per_conn"] > 0, summary  # pymalloc's and malloc's bytes


@pytest.mark.parametrize("store", ["memory", "redis"])
def test_open_cpu_times_every_socket_opening(store: str) -> None:
    """The in-process open measurement: every round waits until every socket has `opened`
    (else it fails), counts Redis's commands on Redis, and the summary names its figures."""
    result = _run(
        [sys.executable, "-m", "loadtests.open_cpu", "--sessions", "30", "--rounds", "3",
         *(["--memory"] if store == "memory" else [])],
        timeout=120,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["sessions"] == 30 and summary["rounds"] == 2 and summary["store"] == store
    assert summary["cpu_ms_per_open_p50"] > 0 and summary["opens_per_s_p50"] > 0, summary
    assert (summary["redis_commands_per_open_p50"] > 0) == (store == "redis"), summary
    assert "ms CPU per open" in result.stdout


@pytest.mark.parametrize(("store", "kind"), [("memory", "ack"), ("redis", "progress")])
def test_inbound_cpu_times_candidate_messages_until_they_are_in_sql(store: str, kind: str) -> None:
    """The in-process inbound measurement: every round waits until this process has heard
    every message's event (else it says so) and drained it to SQL; the breakdown names its
    parts."""
    result = _run(
        [sys.executable, "-m", "loadtests.inbound_cpu", "--sessions", "20", "--rounds", "2",
         "--rate", "40", "--seconds", "1", "--kind", kind, "--store", store, "--breakdown"],
        timeout=120,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["kind"] == kind and summary["store"] == store and summary["rounds"] == 1
    assert summary["messages_per_round"] == 40 and summary["cpu_us_per_msg_p50"] > 0, summary
    assert summary["drain_rounds_p50"] >= 1, summary  # its events went to SQL in rounds
    assert "events heard" not in result.stdout  # every message's event was heard
    assert "drain: SQL write" in result.stdout and "dashboard deltas" in result.stdout


def test_loop_stalls_times_the_loop_while_commands_reach_their_candidates(
    tmp_path: Path,
) -> None:
    """The event-loop measurement: every command it sends is applied and reaches its
    candidate, and the report counts the loop's callbacks and iterations by their CPU."""
    out = tmp_path / "stalls.json"
    result = _run(
        [sys.executable, "-m", "loadtests.loop_stalls", "--store", "memory", "--sessions", "30",
         "--rate", "20", "--seconds", "2", "--warmup", "0.5", "--json", str(out),
         "--collect-first", "--patience", "100"],
        timeout=120,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(out.read_text())
    clients = report["clients"]
    assert clients["sent"] > 0 and clients["applied"] == clients["sent"], clients
    assert clients["received"] == clients["sent"], clients
    assert report["callbacks"] > 0 and report["iterations"] > 0, report
    for key in ("over_5ms", "over_20ms", "over_50ms", "max_ms"):
        assert key in report["long_iterations"] and key in report["long_callbacks"], report
    assert "memory N=30" in result.stdout.strip().splitlines()[-1]


def test_loop_tail_explains_the_slowest_deliveries_by_what_overlapped_them(
    tmp_path: Path,
) -> None:
    """`loop_tail.py --explain`: per rate step, the slowest deliveries' windows (send to
    arrival) are matched with the stretches the server noted, against all deliveries."""
    from loadtests.loop_tail import explain

    tail = tmp_path / "tail.json"
    tail.write_text(json.dumps({"stretches": [
        [100.000, "gc pass", 12.0, 12.5], [100.500, "drainer round", 3.0, 3.1]]}))
    deliveries = tmp_path / "deliveries.log"
    deliveries.write_text("".join(
        [f"r1000- {100.2 + i / 1000:.3f} 0.0020\n" for i in range(98)]
        + ["r1000- 99.995 0.0180\n", "r1000- 100.499 0.0050\n"]))
    text = explain(str(tail), str(deliveries), share=0.01)
    assert "r1000: 100 deliveries, the slowest 1 took 18.0-18.0 ms" in text, text
    assert "gc pass          in 100.0 % of the slowest" in text, text
    assert "drainer round    in   0.0 % of the slowest" in text and "1.0 % of all" in text, text
    assert "gc pass +5 ms 12.0/12.5" in text, text


def test_loop_tail_says_what_ran_in_each_bulk_command_s_window(tmp_path: Path) -> None:
    """`loop_tail.py --bulk`: per bulk command, from its call to the end of its fan-out (the
    first hand-off or echo dispatch of 20 ms or more after its answer), the CPU of the SQL
    driver's thread, of the drainer's rounds, of collections and of the fan-out; what falls
    outside that window is not counted."""
    from loadtests.loop_tail import bulk

    tail = tmp_path / "tail.json"
    tail.write_text(json.dumps({
        "bulk_commands": [[100.0, 0.2]],
        "stretches": [[99.9, "drainer round", 50.0, 50.0], [100.05, "drainer round", 4.0, 4.0],
                      [100.1, "gc gen1", 6.0, 6.0], [100.21, "hand-off", 150.0, 150.0],
                      [100.5, "gc pass", 30.0, 30.0]],
        "sql_thread": [[99.95, 40.0], [100.02, 3.5], [100.3, 1.5], [100.4, 9.0]],
    }))
    lines = bulk(str(tail)).splitlines()
    assert len(lines) == 2, lines
    assert lines[1].split() == ["100.000", "200.0", "360.0", "ms", "|", "5.0", "4.0", "6.0",
                                "150.0"], lines


class _Entry:
    """What the verdict reads of a locust stats entry (importing locust here would
    monkey-patch the test process with gevent)."""

    def __init__(self, requests: int, failures: int = 0, p95: float = 0.0) -> None:
        self.num_requests, self.num_failures, self.p95 = requests, failures, p95

    def get_response_time_percentile(self, _share: float) -> float:
        return self.p95


class _Stats:
    def __init__(self, entries: dict[tuple[str, str], _Entry]) -> None:
        self.entries = entries
        self.total = _Entry(sum(e.num_requests for e in entries.values()),
                            sum(e.num_failures for e in entries.values()))


def test_locust_verdict_fails_on_failures_or_slow_commands() -> None:
    """The summary line says FAIL (and why) above the failure share or the command p95."""
    from loadtests.verdict import judge

    fine = _Stats({("command pause", "WS-CMD"): _Entry(99, 0, 20.0)})
    assert judge(fine, 0.01, 1000).passed
    failing = _Stats({("command pause", "WS-CMD"): _Entry(99, 0, 20.0),
                      ("open", "WS"): _Entry(3, 2, 5.0)})
    verdict = judge(failing, 0.01, 1000)
    assert not verdict.passed and "failures 1.96% > 1.00%" in verdict.line
    slow = _Stats({("command pause", "WS-CMD"): _Entry(10, 0, 3000.0)})
    verdict = judge(slow, 0.01, 1000)
    assert not verdict.passed and "command p95 3000 ms > 1000 ms" in verdict.line
    assert not judge(_Stats({}), 0.01, 1000).passed  # nothing measured is no pass


def _bulk(hall: int, last_ms: float) -> dict[str, float]:
    return {"hall": hall, "applied": hall, "received": hall, "lost": 0, "last_ms": last_ms,
            "last_parsed_ms": last_ms + 100, "rest_ms": last_ms / 2, "server_cpu_ms": 1.0,
            "server_cpu_raw_ms": 1.0, "redis_cpu_ms": 0.0, "harness_cpu_ms": 50.0}


def test_pause_figures_count_only_repeats_that_reached_the_whole_hall() -> None:
    """A server that dropped most of its candidates fans out to fewer, and faster: such a
    repeat is not "pause all of N", and its figure must not stand beside a whole hall's."""
    from loadtests.compare import headlines, summarize_pauses

    n = 5000
    ours = summarize_pauses(n, [_bulk(n, 600.0), _bulk(n, 700.0), _bulk(n, 650.0)],
                            [_bulk(n, 650.0)])
    assert ours["pause_last_p50_ms"] == 650.0 and ours["whole_hall_repeats"] == 3
    assert ours["pause_last_parsed_p50_ms"] == 750.0 and ours["pause_harness_cpu_p50_ms"] == 50.0
    # the peer reached everyone once (slowly), then only the 954 it still held
    peer = summarize_pauses(n, [_bulk(n, 1400.0), _bulk(954, 140.0), _bulk(954, 190.0)],
                            [_bulk(954, 200.0)])
    assert peer["pause_last_p50_ms"] == 1400.0 and peer["smallest_hall"] == 954
    assert peer["resume_last_p50_ms"] is None
    never = summarize_pauses(n, [_bulk(954, 140.0)], [_bulk(954, 150.0)])
    assert never["pause_last_p50_ms"] is None and never["pause_rest_p50_ms"] is None
    runs = [{"config": "memory:1", "n": n, "backend": "memory", "pause_repeats": ours},
            {"config": "peer:1", "n": n, "backend": "peer", "pause_repeats": never}]
    text = "\n".join(headlines(runs))
    assert "pause-all last candidate (p50 of repeats) 650.0 ms (peer None ms, no ratio)" in text
    assert ("note: the peer's \"pause all\" reached at most 954 of 5000 candidates" in text)
    assert "note: ours" not in text


async def _burst(k: int, reader: object, on_message: object) -> None:
    """`k` harness sockets (`loadtests.wsclient`, with `reader`) on a websockets server that
    then writes one frame to all of them at once, as a "pause all"; until each has it."""
    import asyncio

    import msgpack
    from websockets.asyncio.server import ServerConnection, broadcast, serve

    from loadtests.common import MSGPACK
    from loadtests.wsclient import WsPeer, connect

    server_side: list[ServerConnection] = []
    all_in = asyncio.Event()
    done = asyncio.Event()
    count = 0

    async def handler(connection: ServerConnection) -> None:
        server_side.append(connection)
        if len(server_side) == k:
            all_in.set()
        await connection.wait_closed()

    def counted(peer: WsPeer, message: dict[str, object]) -> None:
        nonlocal count
        count += 1
        if count == k:
            done.set()
        on_message(peer, message)  # type: ignore[operator]

    async with serve(handler, "127.0.0.1", 0, subprotocols=[MSGPACK]) as server:  # type: ignore[list-item]
        port = server.sockets[0].getsockname()[1]
        peers = [await connect(f"ws://127.0.0.1:{port}/", counted,
                               reader=reader)  # type: ignore[arg-type]
                 for _ in range(k)]
        async with asyncio.timeout(30):
            await all_in.wait()
            broadcast(server_side, msgpack.packb({"type": "command", "command_id": "all"}))
            await done.wait()
        for peer in peers:
            peer.abort()


@pytest.mark.parametrize("read_first", [True, False])
async def test_the_harness_reads_every_socket_of_a_burst_before_parsing_any(
        read_first: bool) -> None:
    """A frame written to many sockets at once, as a "pause all": with `ReadFirst` (the
    benchmark's default) the harness reads, and stamps, every socket's frame before it parses
    the first, so no socket's arrival waits for the others' parsing (thousands of browsers
    read in parallel); inline, each socket is read only after the previous one was parsed."""
    from loadtests.wsclient import ReadFirst, WsPeer, clock

    k = 40
    parsed: list[float] = []
    arrived: list[float] = []

    def on_message(peer: WsPeer, message: dict[str, object]) -> None:
        parsed.append(clock())
        arrived.append(peer.arrived_at)

    reader = ReadFirst() if read_first else None
    await _burst(k, reader, on_message)
    assert len(parsed) == k
    if read_first:
        assert max(arrived) < min(parsed)
        assert reader is not None and reader.most_pending >= k
    else:
        assert max(arrived) > min(parsed)  # the last socket was read after the first parse


async def test_one_socket_s_error_does_not_stop_the_harness_parsing_the_others() -> None:
    """Read first, an exception in one socket's handling (reported by the loop) leaves the
    queue worked off: the other sockets' frames are still parsed."""
    from loadtests.wsclient import ReadFirst, WsPeer

    seen = 0

    def on_message(peer: WsPeer, message: dict[str, object]) -> None:
        nonlocal seen
        seen += 1
        if seen == 1:
            raise RuntimeError("this socket's handling fails")

    await _burst(20, ReadFirst(), on_message)
    assert seen == 20


def test_drain_backlog_drains_a_pauses_backlog_and_times_the_loop() -> None:
    """The drain measurement drains everything it committed (2 × (a pause and a resume of 40,
    each with its 40 acks): 320 events) and prints its figures."""
    result = _run(
        [sys.executable, "-m", "loadtests.drain_backlog", "--sessions", "40", "--repeats", "2",
         "--ack-batch", "7"],
        timeout=120,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    line = result.stdout.strip().splitlines()[-1]
    assert line.startswith("320 events drained in "), line
    assert "longest loop stretches" in line and ">= 10 / 20 / 40 ms" in line, line
    assert "s process CPU (loop thread " in line, line
