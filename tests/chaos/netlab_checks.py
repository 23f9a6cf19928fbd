"""Independent checkers for lab scenarios, each looking from outside the agents:

- ServingWatch: polls every server's app instances (/healthz, straight over the management
  links, not through an edge) and finds intervals in which two servers served one slot;
- Writer: posts messages through the edges during a fault and, after recovery, finds every
  acknowledged (201) message that cannot be read back;
- verdicts after a baseline, from /v1/decisions of a live agent (see LabCluster.verdicts).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from tests.chaos.netlab_cluster import BASE_DOMAIN, EDGE_PORT, LabCluster
from tests.support import REPO

GAP_S = 0.5  # a pair not answered for longer starts a new serving run
PASSWORD = "a long lab password 1"


@dataclass(frozen=True)
class Sample:
    at: float  # loop time, midway between request and answer
    server: str
    slot: str
    serving: bool
    epoch: int
    pid: int


@dataclass
class Run:
    """Consecutive serving answers of one instance."""

    slot: str
    server: str
    pid: int
    start: float
    end: float


@dataclass(frozen=True)
class Overlap:
    slot: str
    first: str
    second: str
    start: float
    end: float

    def __str__(self) -> str:
        both = f"{self.first} and {self.second} both served"
        return f"{self.slot}: {both} {self.start:.3f}..{self.end:.3f} (loop time)"


class ServingWatch:
    """Which server served which slot when, seen from outside."""

    def __init__(self, lab: LabCluster, interval_s: float = 0.1) -> None:
        self.lab = lab
        self.interval_s = interval_s
        self.slots = [s["name"] for s in lab.config["slots"]]
        self.samples: list[Sample] = []
        self._task: asyncio.Task[None] | None = None
        self._http: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> ServingWatch:
        timeout = aiohttp.ClientTimeout(total=0.4)
        self._http = aiohttp.ClientSession(timeout=timeout, cookie_jar=aiohttp.DummyCookieJar())
        self._task = asyncio.create_task(self._poll())
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._http is not None:
            await self._http.close()

    async def _poll(self) -> None:
        pairs = list(itertools.product(self.lab.names, self.slots))
        while True:
            await asyncio.gather(*(self._ask(server, slot) for server, slot in pairs))
            await asyncio.sleep(self.interval_s)

    async def _ask(self, server: str, slot: str) -> None:
        assert self._http is not None
        loop = asyncio.get_running_loop()
        sent = loop.time()
        try:
            async with self._http.get(self.lab.app_url(server, slot, "/healthz")) as resp:
                doc = await resp.json()
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return
        at = (sent + loop.time()) / 2
        self.samples.append(
            Sample(at, server, slot, bool(doc["serving"]), int(doc["epoch"]), int(doc["pid"]))
        )

    def runs(self) -> list[Run]:
        runs: list[Run] = []
        open_runs: dict[tuple[str, str], Run] = {}
        for s in sorted(self.samples, key=lambda x: x.at):
            key = (s.slot, s.server)
            run = open_runs.get(key)
            if not s.serving:
                open_runs.pop(key, None)
            elif run is not None and run.pid == s.pid and s.at - run.end <= GAP_S:
                run.end = s.at
            else:
                open_runs[key] = Run(s.slot, s.server, s.pid, s.at, s.at)
                runs.append(open_runs[key])
        return runs

    def overlaps(self) -> list[Overlap]:
        found = []
        runs = self.runs()
        for a, b in itertools.combinations(runs, 2):
            if a.slot == b.slot and a.server != b.server:
                start, end = max(a.start, b.start), min(a.end, b.end)
                if start <= end:
                    found.append(Overlap(a.slot, a.server, b.server, start, end))
        return found

    def last_serving(self, slot: str, server: str) -> float | None:
        times = [s.at for s in self.samples if s.slot == slot and s.server == server and s.serving]
        return max(times) if times else None

    def first_serving(self, slot: str, after: float, not_on: str | None = None) -> Sample | None:
        """The first serving answer for `slot` after `after` from any server but `not_on`."""
        return next(
            (
                s
                for s in sorted(self.samples, key=lambda x: x.at)
                if s.slot == slot and s.serving and s.at > after and s.server != not_on
            ),
            None,
        )

    def serving_gaps(self, slot: str, since: float) -> float:
        """The longest time after `since` without any serving answer for `slot`."""
        served = sorted(s.at for s in self.samples if s.slot == slot and s.serving and s.at > since)
        times = [since, *served]
        return max((b - a for a, b in itertools.pairwise(times)), default=0.0)


def overlap_logs(lab: LabCluster) -> tuple[int, str]:
    """scripts/check_overlap.py over the app instances' own serving records."""
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "check_overlap.py"), str(lab.data_dir / "overlap")],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    return done.returncode, done.stdout + done.stderr


@dataclass
class Writer:
    """One signed-in person of `tenant` posting numbered messages into one thread."""

    lab: LabCluster
    tenant: str
    slot: str
    cookie: str = ""
    thread: str = ""
    attempts: int = 0
    acked: dict[str, str] = field(default_factory=dict)  # message id -> body
    errors: dict[int, int] = field(default_factory=dict)  # status (0: no answer) -> count

    async def call(
        self, method: str, path: str, via: str, body: Any = None, timeout_s: float = 3.0
    ) -> tuple[int, Any]:
        host = f"{self.tenant}.{BASE_DOMAIN}"
        headers = {"Host": host, "Origin": f"http://{host}"}
        if self.cookie:
            headers["Cookie"] = f"mw_session={self.cookie}"
        url = self.lab.url(via, EDGE_PORT, "/api/v1" + path)
        try:
            async with asyncio.timeout(timeout_s):
                request = self.lab.http.request(
                    method, url, json=body, headers=headers, timeout=aiohttp.ClientTimeout(None)
                )
                async with request as resp:
                    if "mw_session" in resp.cookies:
                        self.cookie = resp.cookies["mw_session"].value
                    text = await resp.text()
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return 0, None
        try:
            return resp.status, json.loads(text) if text else None
        except ValueError:
            return resp.status, text  # an HTML error page (the edge's or a fenced app's)

    async def provision(self, via: str) -> None:
        """Create the tenant in its slot's database, sign its owner in, open a thread."""
        done = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "app.admin", "tenant-create",
            "--data-dir", str(self.lab.data_dir / "slots" / self.slot),
            "--name", self.tenant, "--admin-email", "owner@example.test",
            stdout=asyncio.subprocess.PIPE, cwd=REPO,
        )  # fmt: skip
        out, _ = await asyncio.wait_for(done.communicate(), 60)
        token = json.loads(out.decode().strip().splitlines()[-1])["setup_token"]
        body = {"token": token, "display_name": "Owner", "password": PASSWORD}
        # Generous bounds: password hashing on a busy 2-core machine is slow.
        status, _ = await self.call("POST", "/invitations/accept", via, body, timeout_s=30)
        assert status == 201, status
        status, space = await self.call("POST", "/spaces", via, {"name": "lab"}, timeout_s=30)
        assert status == 201, space
        status, thread = await self.call(
            "POST", f"/spaces/{space['id']}/threads", via, {"title": "writes"}, timeout_s=30
        )
        assert status == 201, thread
        self.thread = str(thread["id"])

    async def write_until(self, stop: asyncio.Event, vias: list[str], interval_s: float) -> None:
        for n in itertools.count():
            if stop.is_set():
                return
            body = f"{self.tenant} message {n}"
            self.attempts += 1
            status, doc = await self.call(
                "POST", f"/threads/{self.thread}/messages", vias[n % len(vias)], {"body": body}
            )
            if status == 201:
                self.acked[str(doc["id"])] = body
            else:
                self.errors[status] = self.errors.get(status, 0) + 1
            await asyncio.sleep(interval_s)

    async def read_all(self, via: str) -> dict[str, str] | str:
        """Every message of the thread, read through `via`; or why not (status and body)."""
        found: dict[str, str] = {}
        path = f"/threads/{self.thread}/messages?after=0&limit=100"
        while True:
            status, page = await self.call("GET", path, via)
            if status != 200 or not isinstance(page, dict):
                return f"{via}: {status} {str(page)[:120]!r}"
            found.update({str(m["id"]): m["body"] for m in page["items"]})
            if not page["next"]:
                return found
            path = f"/threads/{self.thread}/messages?cursor={page['next']}&limit=100"

    async def lost(self, vias: list[str], timeout_s: float = 30.0) -> list[str]:
        """Acknowledged messages that are not readable (read through any of `vias`)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        why: list[str] = []
        while loop.time() < deadline:
            why = []
            for via in vias:
                found = await self.read_all(via)
                if isinstance(found, str):
                    why.append(found)
                    continue
                return sorted(f"{i}: {b}" for i, b in self.acked.items() if found.get(i) != b)
            await asyncio.sleep(0.5)
        return [
            f"{len(self.acked)} acknowledged messages of {self.tenant}: thread unreadable "
            f"(last answers: {'; '.join(why)})"
        ]
