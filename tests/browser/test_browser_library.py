"""client/realtime.js on its own, in Chromium, against a scripted fake WebSocket.

These pin the library's rules that are awkward to provoke with a real server: which close codes
reconnect, the backoff, what is sent on (re)open, acks and pongs, request ids, version checks.
"""

from __future__ import annotations

from typing import Any

import pytest
from browser_support import Browsers

pytestmark = [pytest.mark.browser, pytest.mark.asyncio(loop_scope="session")]

# A WebSocket stand-in: the test plays the server with `serverSend` and `serverClose`.
FAKE = """
window.rtFake = (() => {
  const sockets = [];
  class FakeSocket {
    constructor(url, protocols) {
      this.url = url; this.protocols = protocols; this.readyState = 0; this.sent = [];
      sockets.push(this);
      setTimeout(() => { if (this.readyState === 0) { this.readyState = 1; this.onopen?.(); } }, 0);
    }
    send(data) { this.sent.push(JSON.parse(data)); }
    close(code, reason) { this.readyState = 3; this.closedWith = code; }
    serverSend(message) { this.onmessage?.({ data: JSON.stringify(message) }); }
    serverClose(code, reason = "") { this.readyState = 3; this.onclose?.({ code, reason }); }
  }
  const memory = () => { const m = new Map(); return {
    getItem: (k) => (m.has(k) ? m.get(k) : null), setItem: (k, v) => m.set(k, String(v)),
    removeItem: (k) => m.delete(k) }; };
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
  return { sockets, FakeSocket, memory, sleep };
})();
"""


async def run(browsers: Browsers, script: str) -> Any:
    page = await browsers.page(await browsers.context())
    await page.goto("/healthz")
    await page.evaluate(FAKE)
    return await page.evaluate(
        "async () => { const rt = await import('/client/realtime.js');"
        "const { sockets, FakeSocket, memory, sleep } = window.rtFake;" + script + "}"
    )


async def test_close_codes_decide_reconnects(browsers: Browsers) -> None:
    result = await run(
        browsers,
        """
        const out = {};
        for (const code of [1000, 1001, 1006, 1011, 4008, 4009, 4010, 4029, 4100, 4101, 4102,
                            4103, 4401, 4403, 4406]) {
          sockets.length = 0;
          const conn = new rt.CandidateConnection({ accessCode: "abcd", WebSocket: FakeSocket,
            storage: memory(), backoff: { initial: 5, max: 10 } });
          const ended = [];
          conn.addEventListener("ended", (e) => ended.push(e.detail.reason));
          conn.connect();
          await sleep(5);
          sockets[0].serverClose(code);
          await sleep(40);
          out[code] = { reopened: sockets.length > 1, state: conn.state, ended: ended[0] ?? null };
          conn.close();
        }
        out.mirror = [4099, 4100].map(rt.mayReconnect);
        return out;
        """,
    )
    for code in (1000, 1001, 1006, 1011, 4008, 4009, 4010, 4029):
        assert result[str(code)]["reopened"], code
    for code in (4100, 4101, 4102, 4103, 4401, 4403, 4406):
        assert not result[str(code)]["reopened"], code
        assert result[str(code)]["state"] == "closed"
    assert result["4101"]["ended"] == "terminated"
    assert result["4102"]["ended"] == "completed"
    assert result["4100"]["ended"] == "superseded"
    assert result["mirror"] == [True, False]


async def test_backoff_grows_with_jitter_and_resets(browsers: Browsers) -> None:
    result = await run(
        browsers,
        """
        const b = new rt.Backoff({ initial: 100, max: 1000, factor: 2, jitter: 0.5 });
        const delays = Array.from({ length: 8 }, () => b.next());
        b.reset();
        const again = b.next();
        const low = new rt.Backoff({ initial: 100, max: 1000, random: () => 0 });
        const high = new rt.Backoff({ initial: 100, max: 1000, random: () => 0.999999 });
        return { delays, again, low: [low.next(), low.next()], high: [high.next(), high.next()] };
        """,
    )
    bases = [100, 200, 400, 800, 1000, 1000, 1000, 1000]
    for delay, base in zip(result["delays"], bases, strict=True):
        assert base / 2 <= delay <= base
    assert 50 <= result["again"] <= 100
    assert result["low"] == [50, 100]
    assert result["high"] == [100, 200]


async def test_candidate_protocol(browsers: Browsers) -> None:
    result = await run(
        browsers,
        """
        const storage = memory();
        const conn = new rt.CandidateConnection({ accessCode: " ab12cd ", WebSocket: FakeSocket,
          storage, backoff: { initial: 5, max: 10 } });
        const commands = [];
        conn.addEventListener("command", (e) => commands.push(e.detail.action));
        conn.progress(3, 1);  // before the open: kept and sent after `opened`
        conn.connect();
        await sleep(5);
        const ws = sockets[0];
        const first = ws.sent.slice();
        const now = Date.now() / 1000;
        ws.serverSend({ type: "opened", resume_token: "tok-1", relocked: false, server_time: now,
          session: { id: "s1", status: "active", version: 3, deadline: now + 600,
                     paused_at: null },
          exam: { id: "e1", title: "T", duration_minutes: 10 } });
        ws.serverSend({ type: "ping", t: 123.5 });
        ws.serverSend({ type: "command", command_id: "c-9", action: "pause", details: {},
          session: { status: "paused", paused_at: Date.now() / 1000, version: 4 } });
        ws.serverSend({ type: "command", command_id: "c-8", action: "resume", details: {},
          session: { status: "active", version: 2 } });  // stale: state ignored, still acked
        const afterOpen = ws.sent.slice(first.length);
        ws.serverClose(1006);
        await sleep(40);
        const reopen = sockets[1].sent[0];
        return { protocols: ws.protocols, url: ws.url, first, afterOpen, reopen, commands,
                 status: conn.session.status, stored: storage.getItem("realtime.resume.AB12CD"),
                 left: conn.timeLeft() };
        """,
    )
    assert result["protocols"] == ["realtime.v1.json"]
    assert result["url"].endswith("/ws/candidate")
    [open_message] = result["first"]
    assert open_message["type"] == "open"
    assert open_message["access_code"] == "AB12CD"
    assert "resume_token" not in open_message
    client_id = open_message["client_id"]
    assert result["afterOpen"] == [
        {"type": "progress", "position": 3, "answered": 1},
        {"type": "pong", "t": 123.5},
        {"type": "ack", "command_id": "c-9"},
        {"type": "ack", "command_id": "c-8"},
    ]
    assert result["commands"] == ["pause", "resume"]
    assert result["status"] == "paused"
    assert result["stored"] == "tok-1"
    assert result["reopen"] == {
        "type": "open",
        "client_id": client_id,
        "access_code": "AB12CD",
        "resume_token": "tok-1",
    }
    assert 590_000 < result["left"] <= 600_000


async def test_dashboard_protocol(browsers: Browsers) -> None:
    result = await run(
        browsers,
        """
        const conn = new rt.DashboardConnection({ examId: "e1", token: "t o k",
          WebSocket: FakeSocket, backoff: { initial: 5, max: 10 }, heartbeat: 0 });
        const changes = [];
        const syncs = [];
        const delivered = [];
        conn.addEventListener("change",
          (e) => changes.push([e.detail.session.id, e.detail.fields]));
        conn.addEventListener("sync", (e) => syncs.push(e.detail.mode));
        conn.addEventListener("delivered", (e) => delivered.push(e.detail.command_id));
        conn.connect();
        await sleep(5);
        const ws = sockets[0];
        const subscribe1 = ws.sent[0];
        ws.serverSend({ type: "snapshot", exam: { id: "e1" }, seq: 10, sessions: [
          { id: "a", status: "active", locked: false, version: 5 },
          { id: "b", status: "active", locked: false, version: 2 } ] });
        ws.serverSend({ type: "event", event: { seq: 11, session_id: "a", kind: "pause",
          changes: { status: "paused", version: 6 }, details: {} } });
        ws.serverSend({ type: "event", event: { seq: 11, session_id: "a", kind: "pause",
          changes: { status: "weird", version: 6 }, details: {} } });  // duplicate seq: ignored
        ws.serverSend({ type: "event", event: { seq: 12, session_id: "b", kind: "lock",
          changes: { locked: true, version: 1 }, details: {} } });  // older version: ignored
        const pending = conn.command("lock", ["a", "b"], { reason: "why" });
        const sentCommand = ws.sent[1];
        ws.serverSend({ type: "command_result", request_id: sentCommand.request_id,
          command_id: sentCommand.command_id, action: "lock", applied: [], skipped: [] });
        const result = await pending;
        const failing = conn.command("extend", "a", { minutes: 0 });
        const failingSent = ws.sent[2];
        ws.serverSend({ type: "error", code: "invalid", message: "no",
          request_id: failingSent.request_id });
        let error = null;
        try { await failing; } catch (e) { error = [e.name, e.code]; }
        // Dropped while a command is in flight: it is rejected (outcome unknown) ...
        const lost = conn.command("pause", "b");
        ws.serverClose(1006);
        let lostError = null;
        try { await lost; } catch (e) { lostError = e.code; }
        await sleep(40);
        // ... and the re-subscription asks for what was missed since the last seq.
        const ws2 = sockets[1];
        const subscribe2 = ws2.sent[0];
        const queued = conn.command("resume", "a");  // waits for the sync
        const beforeSync = ws2.sent.length;
        ws2.serverSend({ type: "events", exam_id: "e1", seq: 14, events: [
          { seq: 13, session_id: "b", kind: "pause", changes: { status: "paused", version: 3 },
            details: {} },
          { seq: 14, session_id: "b", kind: "delivered", changes: { version: 4 },
            details: { command_id: "x1" } } ] });
        const queuedSent = ws2.sent[1];
        ws2.serverSend({ type: "command_result", request_id: queuedSent.request_id,
          command_id: queuedSent.command_id, action: "resume", applied: [], skipped: [] });
        await queued;
        return { url: ws.url, subscribe1, subscribe2, sentCommand, result, error, lostError,
                 beforeSync, queuedSent, changes, syncs, delivered, lastSeq: conn.lastSeq,
                 a: conn.sessions.get("a"), b: conn.sessions.get("b"),
                 reconnects: conn.reconnects };
        """,
    )
    assert result["url"].endswith("/ws/proctor?token=t%20o%20k")
    assert result["subscribe1"] == {"type": "subscribe", "exam_id": "e1"}
    assert result["subscribe2"] == {"type": "subscribe", "exam_id": "e1", "last_seq": 12}
    command = result["sentCommand"]
    assert command["type"] == "command"
    assert command["action"] == "lock"
    assert command["target"] == ["a", "b"]
    assert command["reason"] == "why"
    assert command["request_id"] and command["command_id"]
    assert result["result"]["command_id"] == command["command_id"]
    assert result["error"] == ["RealtimeError", "invalid"]
    assert result["lostError"] == "connection_lost"
    assert result["beforeSync"] == 1  # the queued command was not sent before the sync
    assert result["queuedSent"]["action"] == "resume"
    assert result["changes"] == [
        ["a", ["status", "version"]],
        ["b", ["status", "version"]],
        ["b", ["version"]],
    ]
    assert result["syncs"] == ["snapshot", "events"]
    assert result["delivered"] == ["x1"]
    assert result["lastSeq"] == 14
    assert result["a"]["status"] == "paused"
    assert result["b"] == {"id": "b", "status": "paused", "locked": False, "version": 4}
    assert result["reconnects"] == 1
