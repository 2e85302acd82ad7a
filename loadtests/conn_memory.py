"""Where the server's memory per idle candidate socket goes, in-process, with real sockets held
by a child process.

    python -m loadtests.conn_memory --sessions 5000
    python -m loadtests.conn_memory --sessions 5000 --store redis
    python -m loadtests.conn_memory --sessions 2000 --trace          # + tracemalloc, by holder
    python -m loadtests.conn_memory --sessions 5000 --freeze-interval 3600

The server (memory store, or a private Redis with `--store redis`; SQLite) runs in this process
under uvicorn with `realtime serve`'s WebSocket settings, and its own garbage-collection policy
(`--freeze-interval` sets REALTIME_GC_FREEZE_INTERVAL; 0 leaves Python's collector alone).
A hall of N candidates is made over REST; then a child process connects N candidate sockets
and opens every session (200 handshakes at a time, as the benchmark does), the opens' history
is written to SQL (on the memory store its outbox entries would count otherwise;
`--no-drained` measures with what is left, as the benchmark does), and the sockets are held
idle for `--hold` seconds. Measured, divided by N:

* `rss_kib_per_conn`: this process's RSS held minus before the first socket (the benchmark's
  `KiB/conn`, taken the same way: nothing collected by the harness in between), and its peak
  while the sockets opened (`rss_peak_kib_per_conn`);
* `heap_kib_per_conn`: bytes allocated and not freed (pymalloc's blocks in use plus glibc
  malloc's), held minus before: unlike RSS, not lowered by reusing free memory an earlier
  burst (the hall's creation) left in the allocators, nor raised by memory they keep after a
  burst (None with `--trace`);
* `frozen`: what the policy had frozen (`gc.get_freeze_count()`) before and after, and the
  garbage among it: after the hold, the young garbage is collected first, then everything is
  unfrozen and collected again (`gc.DEBUG_SAVEALL`, so the dead objects can be counted by
  type before they are freed), and the RSS is read again (`rss_kib_per_conn_collected`);
* `objects`: objects the collector tracks (`gc.get_objects()`, frozen ones included), by type,
  held minus before (strings, bytes and numbers are not tracked: `--trace` counts them);
* with `--trace`, tracemalloc from just before the first socket: the bytes still allocated
  after the hold, by the line that allocated them (the first frame outside the standard
  library, so an `asyncio.Queue` counts for whoever made it) and by holder (the package of
  that line), per socket; and the frozen garbage's share of them.

The last line is the summary as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import gc
import json
import logging
import os
import re
import resource
import sys
import sysconfig
import tempfile
import time
import tracemalloc
from collections import Counter
from pathlib import Path
from typing import Any

from loadtests.common import MSGPACK, raise_nofile
from loadtests.inprocess import create_hall, start_in_process
from realtime.config import WS_IMPLS

EXAM = "idle"
OPEN_TIMEOUT = 900.0  # seconds for the child to open every socket
TRACE_FRAMES = 16
STDLIB = (sysconfig.get_paths()["stdlib"], "<frozen ", "<unknown>")

# The package of the allocating line -> who holds the bytes (first match wins)
HOLDERS = (
    ("uvicorn/protocols/websockets/", "uvicorn WebSocket protocol"),
    ("uvicorn/protocols/http/", "uvicorn HTTP protocol (the handshake)"),
    ("uvicorn/", "uvicorn, other"),
    ("websockets/", "websockets (ServerProtocol, handshake request/response)"),
    ("starlette/", "Starlette (WebSocket, scope)"),
    ("realtime/hub/", "realtime: hub (Connection, CandidateLink)"),
    ("realtime/channels/", "realtime: the candidate endpoint"),
    ("realtime/state/", "realtime: state store (sessions, copy, event log)"),
    ("realtime/presence", "realtime: presence"),
    ("realtime/", "realtime, other"),
    ("sqlalchemy/", "SQL (history writes)"),
    ("aiosqlite/", "SQL (history writes)"),
    ("redis/", "redis client"),
)


def holder_of(filename: str) -> str:
    path = filename.replace(os.sep, "/")
    for marker, name in HOLDERS:
        if marker in path:
            return name
    if path.startswith(STDLIB) or "/asyncio/" in path:
        return "standard library (no caller outside it)"
    return "other: " + Path(path).name


def site_of(trace: tracemalloc.Traceback) -> tracemalloc.Frame:
    """The innermost frame outside the standard library (the innermost one if none)."""
    frames = list(reversed(trace))  # a Traceback runs from the oldest frame to the newest
    for frame in frames:
        if not frame.filename.startswith(STDLIB):
            return frame
    return frames[0]


def short(filename: str) -> str:
    path = filename.replace(os.sep, "/")
    for root in ("site-packages/", "/realtime/", "/loadtests/"):
        if root in path:
            tail = path.split(root, 1)[1]
            return tail if root == "site-packages/" else root.strip("/") + "/" + tail
    return path


def rss_now() -> int:
    """This process's resident set, in bytes (Linux)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()


def reset_peak_rss() -> bool:
    """Start this process's peak RSS (VmHWM) afresh (Linux: /proc/self/clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        return True
    except OSError:
        return False


def peak_rss() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


def heap_bytes() -> tuple[int, int] | None:
    """Bytes allocated and not freed: (pymalloc's blocks in use: Python objects up to 512
    bytes, `sys._debugmallocstats`; glibc malloc's, every thread's: larger objects, uvloop's
    and libuv's own, SQLite's page cache, `mallinfo2`). Unlike RSS, not moved by free memory
    the allocators keep (what an earlier burst left behind). None where glibc's `mallinfo2`
    is missing, or while tracemalloc traces (pymalloc's statistics are not printed then)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallinfo2 = libc.mallinfo2
    except (OSError, AttributeError):
        return None
    mallinfo2.restype = _MallInfo2
    info = mallinfo2()
    with tempfile.TemporaryFile() as out:  # the stats go to the C stderr
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(out.fileno(), 2)
        try:
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        out.seek(0)
        text = out.read().decode(errors="replace")
    found = re.search(r"# bytes in allocated blocks\s*=\s*([\d,]+)", text)
    if found is None:
        return None
    return int(found.group(1).replace(",", "")), int(info.uordblks) + int(info.hblkhd)


def kib_per_conn(held: tuple[int, int] | None, before: tuple[int, int] | None, n: int,
                 part: int = 0, both: bool = False) -> float | None:
    if held is None or before is None:
        return None
    grown = (sum(held) - sum(before)) if both else (held[part] - before[part])
    return round(grown / n / 1024, 2)


def type_name(obj: Any) -> str:
    kind = type(obj)
    module = kind.__module__
    return kind.__qualname__ if module == "builtins" else f"{module}.{kind.__qualname__}"


def object_counts() -> Counter[str]:
    """Objects the collector tracks, frozen ones included, by type (unfreezes: the policy's
    next pass freezes them again)."""
    gc.unfreeze()
    return Counter(type_name(o) for o in gc.get_objects())


def garbage_counts() -> tuple[int, Counter[str], int]:
    """Collect (the generations as they are), keeping the dead objects to count them first:
    (unreachable found, by type, their shallow bytes)."""
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        found = gc.collect()
        counts = Counter(type_name(o) for o in gc.garbage)
        size = sum(sys.getsizeof(o) for o in gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    gc.collect()  # now they are freed
    return found, counts, size


def per_conn(counts: Counter[str], n: int, top: int) -> list[tuple[str, float]]:
    return [(name, round(count / n, 2)) for name, count in counts.most_common(top) if count > 0]


# -- the child: holds the sockets -----------------------------------------------------------------


async def hold(url: str, protocol: str, codes: list[str]) -> None:
    from loadtests.fanout_cpu import hold as hold_opened

    await hold_opened(url, protocol, codes, 0, False)


# -- the parent: the server -----------------------------------------------------------------------


def traced_by(snapshot: tracemalloc.Snapshot, n: int, top: int) -> dict[str, Any]:
    sites: dict[tuple[str, int], list[int]] = {}
    holders: dict[str, list[int]] = {}
    for stat in snapshot.statistics("traceback"):
        frame = site_of(stat.traceback)
        site = sites.setdefault((frame.filename, frame.lineno), [0, 0])
        site[0] += stat.size
        site[1] += stat.count
        holder = holders.setdefault(holder_of(frame.filename), [0, 0])
        holder[0] += stat.size
        holder[1] += stat.count
    total = sum(size for size, _ in holders.values())
    ranked = sorted(sites.items(), key=lambda item: -item[1][0])[:top]
    return {
        "traced_kib_per_conn": round(total / n / 1024, 2),
        "by_holder": [
            {"holder": name, "bytes_per_conn": round(size / n), "blocks_per_conn":
             round(count / n, 2)}
            for name, (size, count) in sorted(holders.items(), key=lambda item: -item[1][0])
        ],
        "by_line": [
            {"line": f"{short(filename)}:{lineno}", "bytes_per_conn": round(size / n),
             "blocks_per_conn": round(count / n, 2)}
            for (filename, lineno), (size, count) in ranked
        ],
    }


async def serve_and_measure(args: argparse.Namespace) -> dict[str, Any]:
    env = {"REALTIME_PING_INTERVAL": "3600"}  # idle: no pings within the measurement
    if args.freeze_interval is not None:
        env["REALTIME_GC_FREEZE_INTERVAL"] = str(args.freeze_interval)
    # the child closing every socket at the end is not a hall dropping out
    logging.getLogger("realtime.alerts").setLevel(logging.ERROR)
    served = await start_in_process("connmem", redis=args.store == "redis", ws=args.ws_impl,
                                    env=env)
    app, settings, base = served.app, served.settings, served.base
    child = None
    try:
        codes = [s["access_code"] for s in await create_hall(base, EXAM, "idle", args.sessions)]
        await asyncio.sleep(1.0)
        objects_before = object_counts()  # unfreezes: the next line is the policy's pass
        gc.collect()
        gc.freeze()
        await asyncio.sleep(0.1)
        if args.trace:
            tracemalloc.start(TRACE_FRAMES)
        frozen_before = gc.get_freeze_count()
        heap_before = heap_bytes()
        rss_before = rss_now()
        peak_reset = reset_peak_rss()
        started = time.monotonic()
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "loadtests.conn_memory", "--holder", base,
            "--protocol", args.protocol,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, limit=1 << 24,
        )
        assert child.stdin is not None and child.stdout is not None
        child.stdin.write((json.dumps(codes) + "\n").encode())
        await child.stdin.drain()
        line = await asyncio.wait_for(child.stdout.readline(), OPEN_TIMEOUT)
        if line.strip() != b"ready":
            raise RuntimeError(f"holder failed: {line!r}")
        opened_s = time.monotonic() - started
        runtime = app.state.runtime
        drain_s = 0.0
        if args.drained:  # the opens' history written to SQL: no outbox entries held for it
            drain_started = time.monotonic()
            while (await runtime.store.outbox_backlog(time.time())).events:
                if time.monotonic() - drain_started > OPEN_TIMEOUT:
                    raise RuntimeError("the opens' history was not drained to SQL")
                await asyncio.sleep(0.2)
            drain_s = time.monotonic() - drain_started
        await asyncio.sleep(args.hold)
        backlog = (await runtime.store.outbox_backlog(time.time())).events
        n = args.sessions
        live = len(runtime.hub.live_candidates())
        if live != n:
            raise RuntimeError(f"{live} of {n} candidates held")
        # the server as it is: nothing collected by the harness yet
        rss_held = rss_now()
        rss_peak = peak_rss() if peak_reset else 0
        heap_held = heap_bytes()
        frozen_held = gc.get_freeze_count()
        snapshot = tracemalloc.take_snapshot() if args.trace else None
        young_found, young_types, young_bytes = garbage_counts()
        objects_held = object_counts()  # unfrozen now: every tracked object, garbage included
        frozen_found, frozen_types, frozen_bytes = garbage_counts()
        rss_collected = rss_now()
        heap_collected = heap_bytes()
        gc.freeze()
        summary: dict[str, Any] = {
            "store": args.store, "sessions": n, "ws": args.ws_impl,
            "freeze_interval": settings.gc_freeze_interval, "opened_s": round(opened_s, 2),
            "opens_per_s": round(n / opened_s, 1), "drain_s": round(drain_s, 2),
            "history_backlog": backlog,
            "rss_kib_per_conn": round((rss_held - rss_before) / n / 1024, 2),
            "rss_kib_per_conn_collected": round((rss_collected - rss_before) / n / 1024, 2),
            "rss_peak_kib_per_conn": (round((rss_peak - rss_before) / n / 1024, 2)
                                      if rss_peak else None),
            "heap_kib_per_conn": kib_per_conn(heap_held, heap_before, n, both=True),
            "pymalloc_kib_per_conn": kib_per_conn(heap_held, heap_before, n, part=0),
            "malloc_kib_per_conn": kib_per_conn(heap_held, heap_before, n, part=1),
            "heap_kib_per_conn_collected": kib_per_conn(heap_collected, heap_before, n,
                                                        both=True),
            "frozen": {
                "before": frozen_before, "held": frozen_held,
                "per_conn": round((frozen_held - frozen_before) / n, 1),
                "young_garbage_per_conn": round(young_found / n, 2),
                "young_garbage_bytes_per_conn": round(young_bytes / n),
                "frozen_garbage_per_conn": round(frozen_found / n, 2),
                "frozen_garbage_bytes_per_conn": round(frozen_bytes / n),
                "frozen_garbage_types": per_conn(frozen_types, n, args.top),
                "young_garbage_types": per_conn(young_types, n, 8),
            },
            "objects_per_conn": per_conn(objects_held - objects_before, n, args.top),
            "objects_total_per_conn": round(
                (sum(objects_held.values()) - sum(objects_before.values())) / n, 1),
        }
        if snapshot is not None:
            summary["traced"] = traced_by(snapshot, n, args.top)
            after = tracemalloc.take_snapshot()
            traced_after = sum(s.size for s in after.statistics("filename"))
            traced_held = sum(s.size for s in snapshot.statistics("filename"))
            summary["traced"]["garbage_kib_per_conn"] = round(
                (traced_held - traced_after) / n / 1024, 2)
            tracemalloc.stop()
        return summary
    finally:
        if child is not None:
            if child.stdin is not None:
                child.stdin.close()
            try:
                await asyncio.wait_for(child.wait(), 60)
            except TimeoutError:
                child.kill()
        try:
            await served.stop(60)
        except TimeoutError:
            print("uvicorn did not stop within 60 s", file=sys.stderr, flush=True)


def report(summary: dict[str, Any]) -> None:
    print(f"{summary['store']} store, {summary['sessions']} idle candidate sockets "
          f"({summary['ws']}, GC freeze every {summary['freeze_interval']} s; opened in "
          f"{summary['opened_s']} s; history drained {summary['drain_s']} s later; "
          f"{summary['history_backlog']} events not yet in SQL when measured)", flush=True)
    print(f"  RSS {summary['rss_kib_per_conn']} KiB per socket (peak during the opens "
          f"{summary['rss_peak_kib_per_conn']}; {summary['rss_kib_per_conn_collected']} once "
          f"every garbage is collected); heap {summary['heap_kib_per_conn']} KiB per socket "
          f"(pymalloc {summary['pymalloc_kib_per_conn']}, malloc "
          f"{summary['malloc_kib_per_conn']}; {summary['heap_kib_per_conn_collected']} "
          f"collected)"
          + (" (tracemalloc's own memory counts in RSS)" if summary.get("traced") else ""),
          flush=True)
    frozen = summary["frozen"]
    print(f"  frozen by the policy: {frozen['before']} -> {frozen['held']} objects "
          f"({frozen['per_conn']} per socket); garbage among them "
          f"{frozen['frozen_garbage_per_conn']} per socket "
          f"(~{frozen['frozen_garbage_bytes_per_conn']} B shallow), young garbage "
          f"{frozen['young_garbage_per_conn']} per socket", flush=True)
    if frozen["frozen_garbage_types"]:
        print("  frozen garbage by type, per socket: " + ", ".join(
            f"{name} {count}" for name, count in frozen["frozen_garbage_types"][:12]), flush=True)
    print(f"  tracked objects per socket: {summary['objects_total_per_conn']}: " + ", ".join(
        f"{name} {count}" for name, count in summary["objects_per_conn"][:20]), flush=True)
    traced = summary.get("traced")
    if traced:
        print(f"  traced: {traced['traced_kib_per_conn']} KiB per socket "
              f"({traced['garbage_kib_per_conn']} KiB of it garbage)", flush=True)
        for row in traced["by_holder"]:
            print(f"    {row['bytes_per_conn']:>7} B {row['blocks_per_conn']:>7} blocks  "
                  f"{row['holder']}", flush=True)
        print("  by line:", flush=True)
        for row in traced["by_line"]:
            print(f"    {row['bytes_per_conn']:>7} B {row['blocks_per_conn']:>7} blocks  "
                  f"{row['line']}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=5000)
    parser.add_argument("--store", choices=["memory", "redis"], default="memory")
    parser.add_argument("--hold", type=float, default=3.0,
                        help="seconds the sockets are held idle before measuring")
    parser.add_argument("--drained", action=argparse.BooleanOptionalAction, default=True,
                        help="before the hold, wait until the opens' history is written to "
                        "SQL (--no-drained: measure with whatever is still in the outbox, as "
                        "the benchmark does)")
    parser.add_argument("--trace", action="store_true",
                        help="tracemalloc: bytes per socket by allocating line and holder "
                        "(slows the opens: take RSS from a run without it)")
    parser.add_argument("--freeze-interval", type=float, default=None,
                        help="REALTIME_GC_FREEZE_INTERVAL (default: the server's)")
    parser.add_argument("--top", type=int, default=25, help="rows of the by-line tables")
    parser.add_argument("--protocol", default=MSGPACK)
    parser.add_argument("--ws-impl", default=os.environ.get("REALTIME_WS_IMPL") or WS_IMPLS[0],
                        choices=WS_IMPLS)
    parser.add_argument("--holder", default="", help=argparse.SUPPRESS)  # the child's part
    args = parser.parse_args(argv)
    raise_nofile()
    import uvloop

    if args.holder:
        codes = json.loads(sys.stdin.readline())
        uvloop.run(hold(args.holder, args.protocol, codes))
        return 0
    summary = uvloop.run(serve_and_measure(args))
    report(summary)
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
