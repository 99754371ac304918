"""The engine's waiting queue, fair between clients: requests wait in one queue per client,
and the next to start is the head of the client with the fewest requests running, ties going
round-robin (the client served longest ago first). One client's 128 choices therefore wait
behind its own requests, not in front of everyone else's: another client's request starts at
the next free slot. With one client (or none given) it is the plain first-in, first-out queue
it replaces, so greedy outputs are unchanged.

    q = FairQueue()
    q.append(req)          # req.client: the API key's or the address's name, or None
    q[0]; q.popleft()      # the next request to start, as a deque's head

Fair queuing between flows is Nagle's (1987) round-robin; vLLM's scheduler keeps one FIFO, and
admission (jielong.serve.admission) bounds what each client may hold. This class is the only
place the engine's order of admission is decided; it is a drop-in for the `deque` the engine
used (append, appendleft, popleft, [0], len, iteration, remove).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator


class FairQueue:
    """Waiting requests by client; `popleft` gives the next one fairly (see the module)."""

    def __init__(self):
        self.queues: dict[object, deque] = {}  # insertion order: the round-robin order
        self.started: dict[object, list] = {}  # requests each client has had popped

    def append(self, r) -> None:
        self.queues.setdefault(getattr(r, "client", None), deque()).append(r)

    def appendleft(self, r) -> None:
        """`r` back at the head (a request the engine preempted): first in its client's
        queue, its client first among equals, and no longer counted as running."""
        client = getattr(r, "client", None)
        q = self.queues.pop(client, deque())
        q.appendleft(r)
        self.queues = {client: q, **self.queues}
        if r in self.started.get(client, ()):
            self.started[client].remove(r)

    def _running(self, client) -> int:
        live = [r for r in self.started.get(client, ()) if r.finish_reason is None]
        if live:
            self.started[client] = live
        else:
            self.started.pop(client, None)
        return len(live)

    def _next(self):
        """The client whose head starts next: fewest running, then longest unserved."""
        if not self.queues:
            raise IndexError("the queue is empty")
        return min(self.queues, key=self._running)  # min keeps the first of equals

    def __getitem__(self, i: int):
        if i != 0:
            raise IndexError("a FairQueue gives only its head, [0]")
        return self.queues[self._next()][0]

    def popleft(self):
        client = self._next()
        q = self.queues.pop(client)  # to the back of the round-robin order
        r = q.popleft()
        if q:
            self.queues[client] = q
        self.started.setdefault(client, []).append(r)
        return r

    def remove(self, r) -> None:
        client = getattr(r, "client", None)
        q = self.queues[client]
        q.remove(r)
        if not q:
            del self.queues[client]

    def __len__(self) -> int:
        return sum(len(q) for q in self.queues.values())

    def __bool__(self) -> bool:
        return bool(self.queues)

    def __iter__(self) -> Iterator:
        return (r for q in list(self.queues.values()) for r in list(q))
