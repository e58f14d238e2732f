"""One replica of a fleet sharing routing state through Redis, as a real process.

``python redis_replica.py URL LEASE_TTL`` builds a :class:`~sttrouter.state.RedisState` and
answers one JSON line per command line on stdin:

- ``trip EID`` — open EID's breaker here (a rejected key); answers ``time.time()`` of the trip;
- ``state EID`` — EID's breaker state in this replica's local view;
- ``wait_open EID`` — block until EID's breaker reads open here (bounded: 10 s); answers
  ``time.time()`` when it did;
- ``hold EID LIMIT N`` — try N leases at once without waiting; answers how many were admitted;
- ``acquire EID LIMIT MAX_WAIT`` — wait up to MAX_WAIT s for one lease; answers ``time.time()``
  of the admission, or false;
- ``release1`` / ``release`` — give back one / every held lease (answers ``time.time()`` /
  how many);
- ``sessions EID LIMIT SECONDS WORKERS HOLD`` — WORKERS loops for SECONDS, each taking a lease
  (waiting up to 2 s), holding it HOLD s and giving it back; answers the counts of admitted and
  failed streams;
- ``status`` — the store's status.

Used by the multi-process tests and ``benchmarks/shared_state.py``.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from sttrouter.endpoint import STTEndpoint
from sttrouter.resilience import AdmissionRefused, BreakerConfig, BreakerState, Permit
from sttrouter.state import RedisSettings, RedisState
from sttrouter.testing import fake_endpoint


def _endpoint(eid: str, limit: int) -> STTEndpoint:
    return fake_endpoint(eid, max_concurrent_sessions=limit)


async def _serve(url: str, lease_ttl: float) -> None:
    settings = RedisSettings(lease_ttl=lease_ttl, poll_interval=0.02, replicas=4)
    state = RedisState.from_url(
        url, settings=settings, breaker_config=BreakerConfig(cool_down=60), queue_limit=64
    )
    await state.start()
    held: list[Permit] = []
    loop = asyncio.get_running_loop()
    print(json.dumps({"ready": True}), flush=True)
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            break
        cmd, *args = line.split()
        out: object
        if cmd == "trip":
            out = time.time()
            state.breakers.breaker(args[0]).trip("key rejected")
        elif cmd == "state":
            out = state.breakers.breaker(args[0]).state.value
        elif cmd == "wait_open":
            b = state.breakers.breaker(args[0])
            limit = time.monotonic() + 10
            while b.state is not BreakerState.OPEN and time.monotonic() < limit:  # noqa: ASYNC110
                await asyncio.sleep(0.0005)  # a bounded poll of the local view
            out = time.time()
        elif cmd == "hold":
            ep = _endpoint(args[0], int(args[1]))
            got = await asyncio.gather(
                *(state.admission.try_acquire_async(ep) for _ in range(int(args[2])))
            )
            permits = [p for p in got if p is not None]
            held.extend(permits)
            out = len(permits)
        elif cmd == "acquire":
            ep = _endpoint(args[0], int(args[1]))
            try:
                held.append(await state.admission.acquire(ep, max_wait=float(args[2])))
                out = time.time()
            except AdmissionRefused:
                out = False
        elif cmd == "release":
            for p in held:
                p.release()
            out = len(held)
            held.clear()
            await state.flush()
        elif cmd == "release1":
            out = time.time()
            held.pop().release()
            await state.flush()
        elif cmd == "sessions":
            ep = _endpoint(args[0], int(args[1]))
            out = await _sessions(state, ep, float(args[2]), int(args[3]), float(args[4]))
        elif cmd == "status":
            out = state.status()
        else:
            out = f"unknown command {cmd}"
        print(json.dumps(out), flush=True)
    await state.aclose()


async def _sessions(
    state: RedisState, ep: STTEndpoint, seconds: float, workers: int, hold: float
) -> dict[str, int]:
    counts = {"admitted": 0, "failed": 0}
    end = time.monotonic() + seconds

    async def worker() -> None:
        while time.monotonic() < end:
            try:
                permit = await state.admission.acquire(ep, max_wait=2.0)
            except AdmissionRefused:
                counts["failed"] += 1
                continue
            counts["admitted"] += 1
            await asyncio.sleep(hold)
            permit.release()

    await asyncio.gather(*(worker() for _ in range(workers)))
    return counts


class Replica:
    """A replica process, driven from a test or a benchmark."""

    def __init__(self, url: str, lease_ttl: float = 1.0) -> None:
        src = str(Path(__file__).resolve().parents[1])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
        self.proc = subprocess.Popen(
            [sys.executable, __file__, url, str(lease_ttl)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        self._ready = False

    def wait_ready(self) -> Replica:
        """Block until the replica answers (start several first, then wait: they boot in
        parallel)."""
        if not self._ready:
            assert self.read() == {"ready": True}
            self._ready = True
        return self

    def send(self, command: str) -> None:
        self.wait_ready()
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()

    def read(self) -> Any:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"replica exited with {self.proc.wait()}")
        return json.loads(line)

    def ask(self, command: str) -> Any:
        self.send(command)
        return self.read()

    def kill(self) -> None:
        """SIGKILL: the replica dies without giving anything back."""
        self.proc.kill()
        self.proc.wait()

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()
        for stream in (self.proc.stdout, self.proc.stdin):
            if stream is not None and not stream.closed:
                stream.close()


if __name__ == "__main__":
    asyncio.run(_serve(sys.argv[1], float(sys.argv[2])))
