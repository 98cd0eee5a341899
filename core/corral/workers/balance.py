"""Keeping a pool's long-lived connections spread over its workers.

Every worker of a pool accepts on the same listening sockets, and the
kernel hands each new connection to whichever worker calls accept() first.
When a client opens many keep-alive connections at once (a load balancer
filling its upstream pool, a benchmark), one worker can take them all
while the others have not been scheduled yet: on a 2-core machine, with
the client busy on the other core, one tornado worker held all 64 of
wrk's connections in 3 runs of 8 and its peer sat idle for the whole run
(docs/performance.md). Those connections stay where they landed, so the
imbalance lasts as long as they do: half the workers serve every request
and the latency tail doubles.

The cure is the one nginx's accept mutex aims at, without a lock: the
arbiter gives each pool a small table in shared memory (:class:`ConnectionShare`,
made before the first fork, so every worker maps the same pages), and
each worker keeps two numbers in its own slot: the connections it holds,
and how many it has accepted in all. A worker steps aside for a moment
(:meth:`AcceptBalance.step_aside`) instead of accepting, leaving the
queued connections to a peer, only when both say the burst is going one
way: it holds clearly more than the least loaded peer, *and* it has
accepted :data:`SLACK` connections in a row while no peer accepted any.
The second condition is meant to keep this away from `Connection: close`
traffic, where connection counts jump up and down all the time but every
worker accepts all the time. It is enough for the asyncio workers
(tornado: `Connection: close` hello unchanged), which accept in batches;
gthread and gevent still lost a quarter to a third of their `Connection:
close` hello world with it, so they do not use the table (docs/performance.md).

A worker steps aside for at most :data:`PATIENCE` per burst: a peer that
does not take the connections (busy, stuck, still booting) costs the burst
that much latency, and then the worker accepts anyway and stops balancing
for :data:`BACKOFF`; balancing may delay an accept, never stop one.

A slot's count is stored plus one, so that 0 means "no worker accepting
here": a free slot, a worker not yet serving, or one that is stopping.
Each slot has one writer (its worker); readers may see numbers a moment
old, which only makes a step aside a little early or late.
"""

from __future__ import annotations

import mmap
import time
from collections.abc import Callable
from typing import ClassVar, Final

#: A worker steps aside while it holds more than the least loaded peer plus
#: this many connections (or plus a quarter of that peer's count, if more),
#: once it has accepted this many in a row with no peer accepting: exact
#: balance is not the goal, no pile-up is.
SLACK: Final = 4
#: How long one step aside lasts, in seconds: time for an idle peer's
#: accept() to run.
STEP: Final = 0.001
#: Stepping aside stops after this long in one burst: the peer is not
#: taking the connections, so this worker does.
PATIENCE: Final = 0.05
#: After that, no stepping aside for this long.
BACKOFF: Final = 1.0


class ConnectionShare:
    """Connection counts of one pool's workers, in memory shared across fork.

    Made by the arbiter; it hands out slots (:meth:`free_slot`) and clears
    the slot of a worker that exited (:meth:`clear`), in case the worker
    could not (a crash, SIGKILL). Slot ``i`` is two integers: the open
    connections plus one (0: absent), and the connections accepted so far.
    """

    def __init__(self, slots: int) -> None:
        self.slots = slots
        # Anonymous and shared: the pages stay the same memory in every child.
        self._map = mmap.mmap(-1, 16 * slots, flags=mmap.MAP_SHARED)
        self.counts = memoryview(self._map).cast("q")

    def free_slot(self, taken: set[int]) -> int | None:
        """The lowest slot not in ``taken`` (the slots of live workers), or None if all are."""
        for slot in range(self.slots):
            if slot not in taken:
                return slot
        return None

    def clear(self, slot: int) -> None:
        self.counts[2 * slot] = 0

    def member(self, slot: int, clock: Callable[[], float] = time.monotonic) -> AcceptBalance:
        """The worker's side, for the worker that was given ``slot`` (absent until it joins)."""
        self.counts[2 * slot] = 0
        return AcceptBalance(self.counts, slot, clock)


class AcceptBalance:
    """One worker's slot: it publishes its numbers and asks whether to step aside.

    :meth:`opened` / :meth:`closed` keep the worker's count; :meth:`join`
    and :meth:`leave` put it in and take it out of the comparison.
    """

    #: The module's constants, where a plugin holding a balance finds them.
    STEP: ClassVar[float] = STEP
    PATIENCE: ClassVar[float] = PATIENCE

    __slots__ = ("_backoff_until", "_clock", "_counts", "_index", "_open", "_peers_accepted",
                 "_present", "_run", "_stepping_since")

    def __init__(self, counts: memoryview, slot: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._counts = counts
        self._index = 2 * slot
        self._open = 0
        self._present = False
        #: Accepted since a peer was last seen accepting.
        self._run = 0
        #: The peers' accepted connections, all together, when last looked at.
        self._peers_accepted = -1
        #: clock() of the first step aside of the burst under way; 0 if none.
        self._stepping_since = 0.0
        self._backoff_until = 0.0

    def join(self) -> None:
        """The worker accepts from now on: peers compare themselves with it."""
        self._present = True
        self._counts[self._index] = self._open + 1

    def leave(self) -> None:
        """The worker accepts no more (it is stopping): peers stop waiting on it."""
        self._present = False
        self._counts[self._index] = 0

    def opened(self) -> None:
        self._open += 1
        self._run += 1
        counts = self._counts
        index = self._index
        counts[index + 1] += 1
        if self._present:
            counts[index] = self._open + 1

    def closed(self) -> None:
        self._open -= 1
        if self._present:
            self._counts[self._index] = self._open + 1

    def step_aside(self) -> bool:
        """Whether to leave the queued connections to a peer for :data:`STEP` s."""
        mine = self._open
        if mine <= SLACK or self._run < SLACK:
            return False  # the common case: no table read
        values = self._counts.tolist()
        lowest = mine
        accepted = 0
        for i in range(0, len(values), 2):
            present = values[i]
            if present and i != self._index:
                accepted += values[i + 1]
                if present - 1 < lowest:
                    lowest = present - 1
        if accepted != self._peers_accepted:
            # A peer accepted since we last looked: the burst is shared already.
            self._peers_accepted = accepted
            self._run = 0
            self._stepping_since = 0.0
            return False
        if mine <= lowest + max(SLACK, lowest >> 2):
            self._stepping_since = 0.0
            return False
        now = self._clock()
        if now < self._backoff_until:
            return False
        if not self._stepping_since:
            self._stepping_since = now
        elif now - self._stepping_since >= PATIENCE:
            # The peer is not taking them: accept, and do not wait on it again soon.
            self._stepping_since = 0.0
            self._backoff_until = now + BACKOFF
            return False
        return True
