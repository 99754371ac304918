"""Admission control: what the server takes on before the engine sees it, so that one client
cannot starve the others and a full server says so at once instead of queueing without end.

    admission = Admission(engine, max_queue=128, max_request_tokens=32768, client_tokens=32768)
    ticket = admission.admit(request, jobs)      # raises ApiError 400, 429 or 503
    batch = Batch(engine, jobs, metrics, ticket=ticket)   # released when its last choice ends

A request's cost is what it may hold in the KV cache: n × max_tokens + its prompt tokens
(each prompt once; max_tokens left out is the room the context leaves). In order:
- the server is draining (shutting down): 503 server_overloaded;
- the cost is over `max_request_tokens` (or over a client's whole share): 400
  request_too_large, naming n and max_tokens (sending it again cannot help);
- the client's requests in flight plus this one are over `client_tokens`: 429
  rate_limit_exceeded (over its share; the others' requests go on);
- the engine's queue already holds `max_queue` waiting choices: 503 server_overloaded.
A 429 and a 503 carry `Retry-After` (seconds: the recent mean time a request is held, times
the queue's length in slots for a 503, between 1 and 60), which the official `openai` client
waits for before it retries by itself (OpenAI's own rate limits answer so: 429 with
code rate_limit_exceeded). A client is its API key (a hash of it; never the key) when the
server has keys, else its address (behind a proxy, give each user a key). The engine's queue
then takes turns between clients (jielong.infer.fair.FairQueue).

`request_timeout`: the most seconds a request is held, waiting and generating; its choices
not done by then end with finish_reason "length", as cut short (jielong.serve.streaming).
On shutdown (`drain`): no new request is taken, the running ones get `seconds` to finish,
and the rest are cut with their final event (finish_reason "length" on /v1, "interrupted"
in the web chat's store).
A limit of 0 is no limit; `create_app` without an Admission takes everything, as before.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import threading
import time

from fastapi import Request

from jielong.infer.engine import Engine
from jielong.infer.sampling import SamplingParams
from jielong.serve.errors import ApiError

Job = tuple[list[int], SamplingParams, str | None]


class Ticket:
    """One admitted request's reservation: its client, cost and deadline; the Batch it became
    (`batch`, set by jielong.serve.streaming.Batch). `release()` once, when it ends."""

    def __init__(self, admission: Admission, client: str, cost: int, timeout: float):
        self.admission, self.client, self.cost = admission, client, cost
        self.start = time.monotonic()
        self.deadline = self.start + timeout if timeout > 0 else None
        self.batch = None
        self.released = False

    def release(self) -> None:
        self.admission.release(self)


class Admission:
    """The server's admission limits (see the module); safe to call from any thread."""

    def __init__(self, engine: Engine, max_queue: int = 0, max_request_tokens: int = 0,
                 client_tokens: int = 0, request_timeout: float = 0):
        self.engine, self.max_queue = engine, max_queue
        self.client_tokens = client_tokens
        self.max_request_tokens = min(x for x in (max_request_tokens, client_tokens,
                                                  math.inf) if x > 0)
        self.request_timeout = request_timeout
        self.lock = threading.Lock()
        self.held: dict[str, int] = {}  # tokens in flight by client
        self.active: set[Ticket] = set()
        self.mean_seconds = 1.0  # moving mean of the time a request is held
        self.draining = False
        self.refused = {"400": 0, "429": 0, "503": 0}

    @staticmethod
    def client(request: Request) -> str:
        """Who sends `request`: its API key (hashed) when it has one, else its address."""
        scheme, _, key = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and key.strip() and request.app.state.api_keys:
            return "key:" + hashlib.sha256(key.strip().encode()).hexdigest()[:16]
        return "addr:" + (request.client.host if request.client else "unknown")

    def cost(self, jobs: list[Job]) -> int:
        """n × max_tokens + the prompt tokens (each distinct prompt once)."""
        prompts = {id(p): len(p) for p, _, _ in jobs}
        return sum(prompts.values()) + sum(
            params.max_tokens or max(1, self.engine.context - len(p)) for p, params, _ in jobs)

    def retry_after(self, slots_of_queue: float = 1.0) -> dict[str, str]:
        return {"Retry-After": str(min(60, max(1, math.ceil(self.mean_seconds * slots_of_queue))))}

    def admit(self, request: Request, jobs: list[Job]) -> Ticket:
        """A reservation for `jobs` (one request's engine requests), or the ApiError that
        refuses them."""
        client, cost = self.client(request), self.cost(jobs)
        with self.lock:
            if self.draining:
                raise self._refuse(503, "the server is shutting down; retry on another "
                                        "server or in a moment", "server_overloaded",
                                   self.retry_after())
            if cost > self.max_request_tokens:
                n = len(jobs)
                raise self._refuse(400, f"this request may hold {cost} tokens ({n} choice"
                                        f"{'s' * (n != 1)} × max_tokens + the prompt), more than "
                                        f"this server's limit of {self.max_request_tokens} per "
                                        "request; lower n or max_tokens",
                                   "request_too_large", param="max_tokens")
            held = self.held.get(client, 0)
            if self.client_tokens and held + cost > self.client_tokens:
                raise self._refuse(429, f"rate limit: your requests in flight hold {held} "
                                        f"tokens and this one may hold {cost}, over your share "
                                        f"of {self.client_tokens}; retry when one ends",
                                   "rate_limit_exceeded", self.retry_after(), type_="tokens")
            waiting = self.engine.stats()["waiting"]
            if self.max_queue and waiting and waiting + len(jobs) > self.max_queue:
                raise self._refuse(503, f"the server is busy: {waiting} requests are waiting "
                                        f"for a slot (at most {self.max_queue}); retry later",
                                   "server_overloaded",
                                   self.retry_after(waiting / self.engine.slots))
            self.held[client] = held + cost
            ticket = Ticket(self, client, cost, self.request_timeout)
            self.active.add(ticket)
        return ticket

    def _refuse(self, status: int, message: str, code: str, headers=None, param=None,
                type_=None) -> ApiError:
        self.refused[str(status)] += 1
        return ApiError(status, message, param=param, code=code, type_=type_, headers=headers)

    def release(self, ticket: Ticket) -> None:
        with self.lock:
            if ticket.released:
                return
            ticket.released = True
            self.active.discard(ticket)
            left = self.held.get(ticket.client, 0) - ticket.cost
            if left > 0:
                self.held[ticket.client] = left
            else:
                self.held.pop(ticket.client, None)
            self.mean_seconds += 0.1 * (time.monotonic() - ticket.start - self.mean_seconds)

    async def drain(self, seconds: float, replies: set | None = None) -> int:
        """Stop taking requests, give the running ones `seconds` to end, then cut the rest
        (each ends with its final event); wait for the web chat's `replies` (tasks) to be
        stored. The number cut."""
        self.draining = True
        end = time.monotonic() + seconds
        while self.active and time.monotonic() < end:
            await asyncio.sleep(0.05)
        with self.lock:
            cut = [t for t in self.active if t.batch is not None]
        for t in cut:
            t.batch.cut("shutdown")
        end = time.monotonic() + 5  # the cut requests' last events, then their replies stored
        while self.active and time.monotonic() < end:
            await asyncio.sleep(0.02)
        if replies:
            await asyncio.wait(list(replies), timeout=5)
        return len(cut)


def admit(request: Request, jobs: list[Job]) -> Ticket | None:
    """The app's admission (`state.admission`) of `jobs`; None when the app has none."""
    admission = getattr(request.app.state, "admission", None)
    return None if admission is None else admission.admit(request, jobs)
