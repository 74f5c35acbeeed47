"""The worker: takes turns off the queue, answers them with the backend, stores and streams replies.

It keeps up to ``worker_concurrency`` turns in flight (a batching backend needs that concurrency;
unset, it is as many as the backend batches: vLLM's ``max_num_seqs``), while turns of one
conversation run strictly in order: each conversation with work has one task draining its backlog.
A turn's life:

1. If storage already holds a good reply to the message (a redelivery after a crash), send that
   again. A stored failure is not a reply: the turn is answered afresh, and the new reply takes
   the failure's place in storage.
2. Build the prompt from stored history within the token budget.
3. Stream the reply to the owning gateway as coalesced deltas. A turn re-queued from the dead
   letters (``revived``) goes to a gateway that runs its channel now, with the message's route on
   its first delta; when no gateway runs it, the turn waits (is released) for one.
4. Store the reply with its figures, send the final delta, and only then ack.

Failures before the first token give the turn back to the queue (``release``) for another try; a
turn delivered more than ``queue_max_deliveries`` times is dead-lettered and the user told so.
Other failures after text has gone out are not retried (that would repeat text): the user gets a
polite error. A dead engine is the exception: the turn goes back, and the worker that takes it
over answers it afresh; its deltas carry the higher delivery count (``attempt``), so the gateway
shows the new reply in place of the broken one. Deterministic failures (a prompt that cannot fit)
are answered politely at once.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from frontdesk import logfmt, metrics, texts
from frontdesk.backoff import Backoff
from frontdesk.errors import (
    EngineDead,
    EngineUnavailable,
    FrontdeskError,
    PromptTooLong,
    QueueUnavailable,
    StorageUnavailable,
)
from frontdesk.settings import Settings
from frontdesk.storage import AwaitingMessage, MessageStatus, ReplyFigures, Store, TurnContext
from frontdesk.supervisor import Supervisor, TaskFailed, cancel_and_wait
from frontdesk.wire import ChatMessage, ReplyDelta, Turn, turn_id_of

from .backends import Backend, GenerationParams, Prompt, Usage
from .context import ANCHOR_EVERY, BuiltPrompt, Cuts, build_prompt
from .knowledge import Retrieval, Retriever
from .knowledge.embeddings import make_embedder
from .queue import Delivery, TurnQueue

log = logging.getLogger(__name__)

DEFAULT_CONCURRENCY = 8  # for backends that do not say how many requests they batch
HISTORY_LIMIT = 200  # messages fetched per prompt; the token budget then trims further
# A turn's attempt, on its deltas: its delivery count, plus this much per re-queue (a revival
# from the dead letters, or the sweep), so a re-queued turn always outranks what came before it
ATTEMPTS_PER_REQUEUE = 1000
ORDER_WAIT_S = 120.0  # longest a turn waits for an earlier message of its conversation
HELD_CAP = 4  # a worker holds at most this many times its concurrency (the rest: waiting)
SWEEP_BATCH = 500  # messages the sweep looks at per round
# A swept turn's revival: seconds since this instant, so each sweep of a message outranks the
# one before it (sweeps of one message are at least ``sweep_after_s`` apart), and any
# dead-letter revival of a turn that had not been swept. 2**30 seconds last until 2060.
SWEEP_EPOCH_S = 1_767_225_600  # 2026-01-01T00:00:00Z


# A turn's last reply delta, with the gateway it goes to: sent with the turn's ack (``_ack``)
Final = tuple[str, ReplyDelta]


class Fenced(Exception):
    """This worker lost its claim on the turn (another took it over): stop, ack nothing."""


class _Wait(Exception):
    """The turn cannot be answered yet: its conversation is leased to another worker, or an
    earlier message of it awaits its reply. The drainer tries again shortly."""


class _Coalescer:
    """Batches text deltas. The first text goes out as soon as the engine's stream pauses (time
    to first token matters), or once ``flush_chars`` have piled up; a reply the engine gives
    whole, without pausing, goes out in one delta when it is stored. After the first text, the
    rest goes with the engine's next words once ``flush_ms`` is up, or when ``flush_chars`` have
    piled up; text that waits for words the engine does not give (it goes quiet: a busy engine, a
    slow tool) goes once it has been quiet for ``flush_ms``. The last delta (``finish``, ``join``)
    is not sent here: it goes to ``gateway`` with the turn's ack, in one command (``_ack``)."""

    def __init__(
        self,
        turn_id: str,
        attempt: int,
        gateway: str,
        send: Callable[[ReplyDelta], Awaitable[None]],
        flush_ms: int,
        flush_chars: int,
        route: dict[str, Any] | None = None,
    ) -> None:
        self._turn_id = turn_id
        self._attempt = attempt
        self._gateway = gateway
        self._send = send
        self._route = route  # on the first delta only: where a revived turn's reply goes
        self._interval = flush_ms / 1000
        self._chars = flush_chars
        self._buffer: list[str] = []
        self._buffered = 0
        self._seq = 0
        self._last = 0.0  # when the last delta went
        self._latest = 0.0  # when the engine's latest text came
        # the send of what is buffered: the first text's, when the stream pauses; later text's,
        # once the engine has been quiet for ``flush_ms`` (``_quiet``)
        self._due: asyncio.Handle | None = None
        self._sending: asyncio.Task[None] | None = None  # that send, under way
        self._held = False  # the reply is complete: the rest goes with the final delta
        self.sent_text = False  # text has gone (or is going) to the user

    async def add(self, text: str) -> None:
        self._buffer.append(text)
        self._buffered += len(text)
        if self._held:
            return
        # a timed send that is over: its failure (Fenced, Redis away) stops the reply here
        sending = self._sending
        if sending is not None and sending.done():
            self._sending = None
            if not sending.cancelled() and (failed := sending.exception()) is not None:
                raise failed
        now = self._latest = time.monotonic()
        if self._buffered >= self._chars or (self.sent_text and now - self._last >= self._interval):
            await self._flush()
            self._last = now
        elif self._due is None:
            loop = asyncio.get_running_loop()
            if not self.sent_text:
                # runs once this task waits: when the engine's stream pauses, not in a whole reply
                self._due = loop.call_soon(self._send_due)
            else:  # in a steady stream, the next words come first and send it
                self._due = loop.call_later(self._interval, self._quiet)

    def hold(self) -> None:
        """The reply is complete (or abandoned): what is buffered goes with the final delta."""
        self._held = True
        if self._due is not None:
            self._due.cancel()
            self._due = None

    async def finish(self, *, error: str | None = None, text: str | None = None) -> Final:
        """End the reply: the deltas before go now, and the last (what is buffered, or
        ``text``, and ``error``) is returned with its gateway, for the turn's ack to send."""
        self.hold()
        if text is not None:
            self._buffer, self._buffered = [text], len(text)
        return await self._final(error=error)

    async def join(self) -> Final:
        """End the reply with nothing shown: a later message's turn answers for this one (the
        last delta is returned, as ``finish`` returns it)."""
        self.hold()
        return await self._final(joined=True)

    def _quiet(self) -> None:
        """Send what is buffered once no text has come for ``flush_ms``."""
        wait = self._latest + self._interval - time.monotonic()
        if wait > 0:  # text came meanwhile: the engine is not quiet
            self._due = asyncio.get_running_loop().call_later(wait, self._quiet)
        else:
            self._send_due()

    def _send_due(self) -> None:
        self._due = None
        if self._buffered and not self._held:
            self.sent_text = True
            self._last = time.monotonic()
            self._sending = asyncio.create_task(self._emit_after(self._sending))
            # its failure (Fenced, Redis away) is raised by the next text added, or the next
            # flush; none may follow
            self._sending.add_done_callback(_retrieved)

    async def _emit_after(self, sending: asyncio.Task[None] | None) -> None:
        if sending is not None:  # a send still under way goes first
            await sending
        await self._emit()

    async def _flush(self) -> None:
        await self._after_sends()
        await self._emit()

    async def _final(self, *, error: str | None = None, joined: bool = False) -> Final:
        """The last delta (what is buffered), once the sends before it are over: not sent."""
        await self._after_sends()
        return self._gateway, self._next(done=True, error=error, joined=joined)

    async def _after_sends(self) -> None:
        if self._due is not None:  # what is buffered goes now, with the next delta
            self._due.cancel()
            self._due = None
        if self._sending is not None:  # a send still under way goes first
            sending, self._sending = self._sending, None
            await sending

    async def _emit(self) -> None:
        """Send what is buffered, as a delta that does not end the reply."""
        delta = self._next(done=False)
        await self._send(delta)
        self._seq += 1
        self.sent_text = self.sent_text or bool(delta.text)

    def _next(self, *, done: bool, error: str | None = None, joined: bool = False) -> ReplyDelta:
        text = "".join(self._buffer)
        self._buffer.clear()
        self._buffered = 0
        route = self._route if self._seq == 0 else None
        return ReplyDelta(
            self._turn_id, self._seq, text, done, error, self._attempt, route, joined=joined
        )


def _retrieved(task: asyncio.Task[None]) -> None:
    if not task.cancelled():
        task.exception()


@dataclass(slots=True)
class _Generated:
    text: str = ""
    usage: Usage | None = None
    ttft_ms: float | None = None
    stopped: bool = False


class Worker:
    """Runs the turn loop on ``start()`` until ``stop()``."""

    def __init__(
        self, settings: Settings, queue: TurnQueue, store: Store, backend: Backend
    ) -> None:
        self.settings = settings
        self.queue = queue
        self.store = store
        self.backend = backend
        self.concurrency: int = settings.worker_concurrency or int(
            getattr(backend, "max_in_flight", DEFAULT_CONCURRENCY)
        )
        self._budget = settings.context_tokens - settings.max_new_tokens
        if self._budget <= 0:
            raise FrontdeskError(
                "FRONTDESK_CONTEXT_TOKENS must be larger than FRONTDESK_MAX_NEW_TOKENS"
            )
        self._cuts = Cuts()  # where long conversations' prompts were cut, for their next turns
        self._backlogs: dict[int, list[Delivery]] = {}  # by message id: older turns first
        self._held: dict[str, Delivery] = {}
        self._leased: set[int] = set()  # conversations this worker is answering
        self._answering: set[str] = set()  # entries being answered under their lease
        self._fenced: set[str] = set()  # held entries another worker has taken over
        self._acking: set[str] = set()  # held entries whose ack is on its way to Redis
        self._waiting_since: dict[str, float] = {}  # entry id -> when it started waiting
        self._waiting: set[str] = set()  # held entries waiting for their turn in order
        self._gathering: set[str] = set()  # of those, waiting out FRONTDESK_BURST_MS (_gather)
        self._drainers: set[asyncio.Task[None]] = set()
        self._room = asyncio.Event()
        self._stopping = False
        self._stops: dict[str, asyncio.Event] = {}  # turn id -> set when the user said /stop
        # the knowledge base, beside the context builder (the backend never sees the database)
        self.retriever = Retriever(settings, store, make_embedder(settings))
        self.turns_done = 0
        self.swept = 0  # messages the sweep queued again
        # resolved with the error when the engine dies (made in start): the process must go
        self.dead: asyncio.Future[EngineDead] | None = None
        self.tasks = Supervisor()

    @property
    def fatal(self) -> asyncio.Future[TaskFailed]:
        """Resolved when one of the worker's long-running tasks keeps failing."""
        return self.tasks.fatal

    async def engine_ready(self) -> None:
        """Raise EngineUnavailable unless the engine can take turns now: it has not died, and
        a remote one answers (a backend's own ``ready``, where it has one)."""
        if self.dead is not None and self.dead.done():
            raise EngineUnavailable("the engine died (the process is stopping)")
        ready = getattr(self.backend, "ready", None)
        if ready is not None:
            await ready()

    async def start(self) -> None:
        self.dead = asyncio.get_running_loop().create_future()
        self.tasks.spawn("worker-loop", self._run)
        self.tasks.spawn("worker-heartbeat", self._heartbeat)
        self.tasks.spawn("worker-cancels", self._watch_cancels)
        self.tasks.spawn("worker-sweep", self._sweep)
        self.fatal.add_done_callback(lambda _f: setattr(self, "_stopping", True))

    async def stop(self, grace_s: float | None = None) -> None:
        """Stop taking turns; let in-flight ones finish for ``grace_s`` (the
        ``shutdown_grace_s`` setting), then hand the rest back to the queue unacked, for
        another worker to take at once."""
        grace_s = self.settings.shutdown_grace_s if grace_s is None else grace_s
        self._stopping = True
        await self.tasks.stop("worker-loop", "worker-sweep", "worker-cancels")
        self._room.set()
        if self._drainers:
            _done, pending = await asyncio.wait(self._drainers, timeout=grace_s)
            leftover = [d for d in self._held.values() if d.entry_id not in self._fenced]
            await cancel_and_wait(pending)  # again, if a cancel was lost (gh-86296)
            for delivery in leftover:
                await self._safely(self.queue.hand_back(delivery))
            if leftover:
                log.warning("handed %d unfinished turns back to the queue", len(leftover))
        await self.tasks.stop()
        await self.retriever.stop()

    async def _run(self) -> None:
        backoff = Backoff()
        while not self._stopping:
            # Turns waiting for an earlier message take no slot (so reclaims go on meanwhile),
            # within a cap on what one worker holds; those waiting out a burst (as many as come
            # in FRONTDESK_BURST_MS) are not capped: each will soon be answered or joined
            active = len(self._held) - len(self._waiting)
            holding = len(self._held) - len(self._gathering)
            room = min(self.concurrency - active, HELD_CAP * self.concurrency - holding)
            if room <= 0:
                self._room.clear()
                await self._room.wait()
                continue
            try:
                deliveries = await self.queue.receive(room, block_ms=1000)
            except Exception as exc:  # Redis away: keep serving, retry with backoff
                log.warning("cannot read turns (%r); retrying in %.1fs", exc, backoff.delay_s)
                await backoff.wait()
                continue
            backoff.reset()
            if self._stopping:  # stopped (or its engine died) while it waited: give them back
                for delivery in deliveries:
                    await self._safely(self.queue.release(delivery))
                return
            for delivery in deliveries:
                await self._dispatch(delivery)

    async def _heartbeat(self) -> None:
        """Touch held turns and renew the conversations' leases well within the claim timeout,
        so none is reclaimed while in work. A turn another worker has taken over meanwhile (this
        one stalled past the timeout) is fenced: it stops at its next delta and is not acked."""
        period = self.settings.queue_claim_idle_ms / 3000
        while True:
            await asyncio.sleep(period)
            try:
                held = list(self._held.values())
                lost = await self.queue.touch(held)
                lost_conversations = await self.queue.renew(
                    list(self._leased), self.settings.queue_claim_idle_ms
                )
            except Exception as exc:
                log.warning("heartbeat failed: %r", exc)
                continue
            for delivery in held:
                turn = delivery.turn
                taken = delivery.entry_id in lost or (
                    turn is not None
                    and turn.conversation_id in lost_conversations
                    and delivery.entry_id in self._answering
                )
                still_held = self._held.get(delivery.entry_id) is delivery
                # (an entry acked meanwhile is gone from the pending list too: not taken)
                if (
                    taken
                    and still_held
                    and delivery.entry_id not in self._fenced
                    and delivery.entry_id not in self._acking
                ):
                    log.warning("turn entry %s was taken over by another worker", delivery.entry_id)
                    self._fenced.add(delivery.entry_id)

    async def _sweep(self) -> None:
        """Queue again, at start and every ``sweep_every_s``, each message older than
        ``sweep_after_s`` that still awaits its reply and has no live turn: stored but never
        queued (the gateway died, the XADD failed), or lost by Redis (a restart without AOF,
        trimming). The queue's check makes a message that has a live turn, or whose conversation
        a worker is answering, count as answered, so no two sweeps queue one message twice."""
        while True:
            cutoff = datetime.now(UTC) - timedelta(seconds=self.settings.sweep_after_s)
            try:
                awaiting = await self.store.awaiting_replies(cutoff, SWEEP_BATCH)
                queued = 0
                for message in awaiting:
                    queued += await self.queue.submit(_swept_turn(message), sweep=True)
            except (FrontdeskError, OSError) as exc:
                log.warning("sweep failed: %r", exc)
            else:
                if queued:
                    metrics.SWEPT.inc(queued)
                    self.swept += queued
                    log.warning("sweep: queued %d unanswered messages again", queued)
            await asyncio.sleep(self.settings.sweep_every_s)

    async def _watch_cancels(self) -> None:
        """Stop a turn this worker is generating when its user says /stop."""
        async for turn_id in self.queue.cancellations():
            stop = self._stops.get(turn_id)
            if stop is not None:
                stop.set()
                await self.backend.cancel(turn_id)

    async def _dispatch(self, delivery: Delivery) -> None:
        turn = delivery.turn
        if turn is None:
            await self._safely(self.queue.dead_letter(delivery, "undecodable entry"))
            return
        if delivery.deliveries > self.settings.queue_max_deliveries:
            await self._give_up(delivery, turn)
            return
        if delivery.deliveries > 1:
            metrics.RECLAIMED.inc()
        self._held[delivery.entry_id] = delivery
        backlog = self._backlogs.get(turn.conversation_id)
        if backlog is not None:
            bisect.insort(backlog, delivery, key=_message_id)  # a reclaimed older turn goes first
            return
        self._backlogs[turn.conversation_id] = [delivery]
        task = asyncio.create_task(
            self._drain(turn.conversation_id), name=f"conv-{turn.conversation_id}"
        )
        self._drainers.add(task)
        task.add_done_callback(self._drainers.discard)

    async def _drain(self, conversation_id: int) -> None:
        backlog = self._backlogs[conversation_id]
        wait = Backoff(first_s=0.05, cap_s=1.0)
        try:
            while backlog:
                delivery = backlog[0]  # the oldest message: a newer one never overtakes it
                try:
                    await self._gather(delivery)
                    finished = await self._process(delivery)
                except BaseException:
                    backlog.remove(delivery)
                    self._forget(delivery)
                    raise
                if not finished:
                    await wait.wait()
                    continue
                wait.reset()
                backlog.remove(delivery)
                self._forget(delivery)
        finally:
            # Cancelled at shutdown: what is still queued here stays unacked for redelivery.
            for delivery in backlog:
                self._forget(delivery)
            del self._backlogs[conversation_id]

    async def _gather(self, delivery: Delivery) -> None:
        """``FRONTDESK_BURST_MS``: wait, taking no slot, until the turn's message is that old, so
        that the user's quick follow-ups are stored by the time it starts (``_answer`` then
        lets the last of them answer for all)."""
        turn = delivery.turn
        assert turn is not None
        wait = turn.burst_ms / 1000 - (time.time() - turn.enqueued_at)
        if wait <= 0:
            return
        self._waiting.add(delivery.entry_id)
        self._gathering.add(delivery.entry_id)
        self._room.set()
        try:
            await asyncio.sleep(wait)
        finally:
            self._waiting.discard(delivery.entry_id)
            self._gathering.discard(delivery.entry_id)

    def _forget(self, delivery: Delivery) -> None:
        self._held.pop(delivery.entry_id, None)
        self._fenced.discard(delivery.entry_id)
        self._waiting_since.pop(delivery.entry_id, None)
        self._waiting.discard(delivery.entry_id)
        self._room.set()

    async def _process(self, delivery: Delivery) -> bool:
        """Answer one turn under its conversation's lease. False when it must wait."""
        turn = delivery.turn
        assert turn is not None
        with logfmt.turn_scope(turn.turn_id, turn.conversation_id, metrics.platform_of(turn)):
            return await self._process_turn(delivery, turn)

    async def _process_turn(self, delivery: Delivery, turn: Turn) -> bool:
        if self.dead is not None and self.dead.done():  # queued here before the engine died
            await self._safely(self.queue.release(delivery))
            return True
        try:
            if not await self.queue.lease(turn.conversation_id, self.settings.queue_claim_idle_ms):
                self._waiting.add(delivery.entry_id)  # another worker answers the conversation
                return False
        except Exception as exc:
            log.warning("cannot lease conversation %s: %r", turn.conversation_id, exc)
            return False
        self._waiting.discard(delivery.entry_id)
        self._leased.add(turn.conversation_id)
        self._answering.add(delivery.entry_id)
        released = False
        try:
            finished, final = await self._answer_leased(delivery, turn)
            if final is not None:  # its last delta, its ack and the lease given up: one write
                released = await self._ack(delivery, turn, final)
            return finished
        finally:
            self._answering.discard(delivery.entry_id)
            self._leased.discard(turn.conversation_id)
            if not released:
                await self._safely(self.queue.unlease(turn.conversation_id))

    async def _ack(self, delivery: Delivery, turn: Turn, final: Final) -> bool:
        """Send a settled turn's last reply delta, ack the turn and release its conversation's
        lease, in one write to Redis. False when that failed (it is logged, and the lease is
        then released alone; the turn, unacked, is answered again once reclaimed)."""
        self._acking.add(delivery.entry_id)
        try:
            await self.queue.ack(delivery, unlease=turn.conversation_id, final=final)
        except Exception as exc:
            log.warning("cannot end turn %s (its last delta and ack): %r", turn.turn_id, exc)
            self.turns_done += 1
            return False
        finally:
            self._acking.discard(delivery.entry_id)
        self.turns_done += 1
        return True

    def _should_wait(self, delivery: Delivery, why: str) -> bool:
        """False (wait) until the turn has waited ``ORDER_WAIT_S``; then True, once, with a
        warning, so that a message that can never be answered does not hold up the rest."""
        started = self._waiting_since.setdefault(delivery.entry_id, time.monotonic())
        if time.monotonic() - started < ORDER_WAIT_S:
            return False
        log.warning(
            "turn entry %s waited %.0fs (%s); answering it", delivery.entry_id, ORDER_WAIT_S, why
        )
        return True

    async def _answer_leased(self, delivery: Delivery, turn: Turn) -> tuple[bool, Final | None]:
        """Answer a turn under its lease: whether it is finished (False: it waits), and when it
        is settled (to be acked: answered, and not taken over meanwhile), its last delta."""
        try:
            with metrics.IN_FLIGHT.track_inprogress():
                final = await self._answer(delivery, turn)
            if delivery.entry_id in self._fenced:  # its last delta is another worker's to send
                raise Fenced(delivery.entry_id)
        except _Wait:
            return False, None
        except Fenced:
            log.warning("turn %s: another worker took it over; stopping", turn.turn_id)
            await self._safely(self.backend.cancel(turn.turn_id))
            return True, None
        except asyncio.CancelledError:
            await self._safely(self.queue.release(delivery))
            raise
        except EngineDead as exc:
            # No turn can be answered here any more: hand this one back, take no more, and
            # let the process exit for its supervisor to restart it
            log.error("engine died during turn %s: %s", turn.turn_id, exc)
            await self._safely(self.queue.release(delivery))
            self._stopping = True
            if self.dead is not None and not self.dead.done():
                metrics.ENGINE_DEATHS.inc()
                self.dead.set_result(exc)
            return True, None
        except Exception as exc:
            log.warning(
                "turn %s (conversation %s) failed on delivery %d: %r",
                turn.turn_id,
                turn.conversation_id,
                delivery.deliveries,
                exc,
            )
            if isinstance(exc, StorageUnavailable):  # not the turn's fault: it waits, uncounted
                await self._safely(self.queue.postpone(delivery))
            else:
                await self._safely(self.queue.release(delivery))
            return True, None
        return True, final

    def _coalescer(
        self, turn: Turn, delivery: Delivery, gateway: str, route: dict[str, Any] | None
    ) -> _Coalescer:
        """What sends the turn's reply deltas to ``gateway`` (``route`` on the first), at the
        pace its channel shows them at, or FRONTDESK_STREAM_FLUSH_MS's when that is slower."""
        return _Coalescer(
            turn.turn_id,
            turn.revived * ATTEMPTS_PER_REQUEUE + delivery.deliveries,
            gateway,
            self._sender(gateway, delivery.entry_id),
            max(self.settings.stream_flush_ms, turn.flush_ms),
            self.settings.stream_flush_chars,
            route,
        )

    async def _joins_later(self, turn: Turn) -> bool:
        """Whether a later message of the same author in the conversation awaits its reply:
        its turn answers this one's too (a question split over quick messages)."""
        if not turn.burst_ms or not turn.user or turn.revived:
            return False
        _platform, _, user_id = turn.user.partition(":")
        return await self.store.awaits_later(turn.conversation_id, turn.message_id, user_id)

    async def _answer(self, delivery: Delivery, turn: Turn) -> Final:
        """Answer one turn. Returns its reply's last delta, which goes with the turn's ack
        (``_ack``); raises to retry it, ``_Wait`` to wait for an earlier message, ``Fenced`` when
        another worker took it."""
        context = await self.store.turn_context(
            turn.conversation_id, turn.message_id, limit=HISTORY_LIMIT
        )
        existing = context.reply
        if existing is None and await self._joins_later(turn):
            await self.store.mark_answered(turn.message_id)
            final = await self._coalescer(turn, delivery, turn.gateway, None).join()
            log.info("turn %s joins a later message's turn (FRONTDESK_BURST_MS)", turn.turn_id)
            _settled(turn, "joined")
            return final
        # Several workers: a turn waits for the earlier messages of its conversation to have
        # their replies (one worker alone takes a conversation's turns in order anyway)
        earlier = self.queue.shared_by_workers and any(
            i < turn.message_id for i in context.awaiting
        )
        if earlier and not self._should_wait(delivery, "an earlier message awaits its reply"):
            self._waiting.add(delivery.entry_id)
            raise _Wait
        gateway, route = await self._destination(turn)
        out = self._coalescer(turn, delivery, gateway, route)
        if existing is not None and existing.status == MessageStatus.OK:
            # a redelivery: the reply is stored already; its message is marked answered before
            # the reply goes (with the ack), or a sweep could ask for it again
            await self.store.mark_answered(turn.message_id)
            final = await out.finish(text=existing.content)
            _settled(turn, "resent")
            return final
        messages = context.history
        previous = next((m.content for m in reversed(messages[:-1]) if m.role == "user"), None)
        retrieval = (
            await self.retriever.retrieve(messages[-1].content, previous) if messages else None
        )
        if retrieval is not None and retrieval.searched:
            metrics.KB_RETRIEVALS.labels("miss" if retrieval.uncovered else "hit").inc()
        if retrieval is not None and retrieval.uncovered and self.retriever.strict:
            # nothing in the help centre fits: say so rather than let the model improvise, and
            # offer a person where there is a desk
            said = texts.NOT_COVERED + (f" {texts.OFFER_PERSON}" if self.settings.desk else "")
            await self.store.record_reply(
                turn.conversation_id, turn.message_id, said,
                ReplyFigures(latency_ms=_ms_since(turn.enqueued_at)),
            )  # fmt: skip
            final = await out.finish(text=said)
            _settled(turn, "not_covered")
            return final
        try:
            built, retrieval = await self._prompt(turn, context, retrieval)
        except PromptTooLong as exc:
            final = await self._fail(turn, out, texts.PROMPT_TOO_LONG, str(exc), 0)
            _settled(turn, "failed")
            return final
        try:
            gen = await self._generate(turn, built.prompt, out)
        except (EngineDead, Fenced):
            # Another worker answers it afresh; the user's reply starts over (a higher attempt)
            raise
        except Exception as exc:
            if not out.sent_text:
                raise  # nothing shown yet: safe to try again
            final = await self._fail(
                turn, out, texts.ENGINE_FAILED, repr(exc), built.prompt.n_tokens
            )
            _settled(turn, "failed")
            return final
        figures = ReplyFigures(
            tokens_in=gen.usage.prompt_tokens if gen.usage else built.prompt.n_tokens,
            tokens_out=gen.usage.completion_tokens if gen.usage else None,
            ttft_ms=gen.ttft_ms,
            latency_ms=_ms_since(turn.enqueued_at),
            model=self.backend.model,
        )
        await self._spend(turn, figures)
        note = texts.STOPPED if gen.stopped else None
        if not gen.text.strip():
            reason = "stopped by the user" if gen.stopped else "empty reply"
            await self.store.record_reply(
                turn.conversation_id, turn.message_id, "", figures, error=reason
            )
            final = await out.finish(error=note or texts.EMPTY_REPLY)
            _settled(turn, "stopped" if gen.stopped else "empty", figures)
            return final
        # A reply stopped part-way is kept as it was shown: it is context for the next turn.
        footer = retrieval.footer() if retrieval is not None and not gen.stopped else ""
        if footer:  # the sources it was given, after it: stored as shown
            await out.add(footer)
            await self.store.record_reply(
                turn.conversation_id, turn.message_id, gen.text + footer, figures,
                sources=retrieval.sources() if retrieval else (), body_chars=len(gen.text),
            )  # fmt: skip
        else:
            await self.store.record_reply(turn.conversation_id, turn.message_id, gen.text, figures)
        final = await out.finish(error=note)
        _settled(turn, "stopped" if gen.stopped else "answered", figures)
        return final

    async def _spend(self, turn: Turn, figures: ReplyFigures) -> None:
        """Count what the turn's generation cost against its user's daily token budget
        (``FRONTDESK_USER_DAILY_TOKENS``; the gateway refuses a user past it)."""
        if self.settings.user_daily_tokens is None or turn.user is None:
            return
        tokens = (figures.tokens_in or 0) + (figures.tokens_out or 0)
        try:
            await self.queue.spend_tokens(turn.user, datetime.now(UTC).date(), tokens)
        except QueueUnavailable as exc:  # the answer goes out all the same
            log.warning("cannot count the tokens of turn %s: %s", turn.turn_id, exc)

    async def _prompt(
        self, turn: Turn, context: TurnContext, retrieval: Retrieval | None
    ) -> tuple[BuiltPrompt, Retrieval | None]:
        """The turn's prompt, the retrieved passages in the message being answered. When the
        message with its passages cannot fit, the weakest passages go, then all of them.

        A conversation longer than what was read (``HISTORY_LIMIT`` messages): the prompt's cuts
        are counted from stored positions (``build_prompt``'s ``offset``), and when everything
        read fits, more is read, so the read limit never decides where the prompt starts."""
        limit = HISTORY_LIMIT
        while True:
            messages, offset = context.history, 0
            if len(messages) >= limit:  # there may be more before what was read
                offset = await self.store.messages_before(turn.conversation_id, context.ids[0])
            built, given = self._fitted(turn.conversation_id, messages, retrieval, offset)
            if not offset or built.dropped > _first_anchor(messages, offset):
                return built, given
            limit *= 4  # all of it fits from the first cut: read further back
            context = await self.store.turn_context(
                turn.conversation_id, turn.message_id, limit=limit
            )

    def _fitted(
        self,
        conversation_id: int,
        messages: list[ChatMessage],
        retrieval: Retrieval | None,
        offset: int,
    ) -> tuple[BuiltPrompt, Retrieval | None]:
        system, budget = self.settings.system_prompt, self._budget
        cuts = self._cuts.of(conversation_id)
        if retrieval is None or not retrieval.passages:
            return build_prompt(
                self.backend, system, messages, budget, offset=offset, cuts=cuts
            ), None
        passages = list(retrieval.passages)
        while True:
            given = Retrieval(passages)
            asked = [*messages[:-1], ChatMessage("user", given.user_turn(messages[-1].content))]
            try:
                built = build_prompt(self.backend, system, asked, budget, offset=offset, cuts=cuts)
                return built, given
            except PromptTooLong:
                if not passages:
                    raise
                passages.pop()

    async def _generate(self, turn: Turn, prompt: Prompt, out: _Coalescer) -> _Generated:
        """Stream the backend's reply into ``out`` until it ends or the user says /stop."""
        params = GenerationParams(
            request_id=turn.turn_id,
            max_tokens=self.settings.max_new_tokens,
            temperature=self.settings.temperature,
        )
        gen = _Generated()
        parts: list[str] = []
        stop = self._stops[turn.turn_id] = asyncio.Event()
        try:
            # aclosing: a cancelled turn closes the stream at once, which stops generation
            async with contextlib.aclosing(self.backend.stream(prompt, params)) as stream:
                async for chunk in stream:
                    if chunk.text:
                        if gen.ttft_ms is None:
                            gen.ttft_ms = _ms_since(turn.enqueued_at)
                        parts.append(chunk.text)
                        await out.add(chunk.text)
                    if chunk.usage is not None:
                        gen.usage = chunk.usage
                    if stop.is_set():
                        break
        finally:
            out.hold()  # what is not sent yet goes with the final delta, after the reply is stored
            del self._stops[turn.turn_id]
        gen.text = "".join(parts)
        gen.stopped = stop.is_set()
        return gen

    async def _fail(
        self, turn: Turn, out: _Coalescer, polite: str, error: str, tokens_in: int
    ) -> Final:
        figures = ReplyFigures(
            tokens_in=tokens_in,
            latency_ms=_ms_since(turn.enqueued_at),
            model=self.backend.model,
        )
        await self.store.record_reply(
            turn.conversation_id, turn.message_id, "", figures, error=error
        )
        return await out.finish(error=polite)

    async def _give_up(self, delivery: Delivery, turn: Turn) -> None:
        with logfmt.turn_scope(turn.turn_id, turn.conversation_id, metrics.platform_of(turn)):
            await self._gave_up(delivery, turn)

    async def _gave_up(self, delivery: Delivery, turn: Turn) -> None:
        reason = f"delivered {delivery.deliveries} times"
        await self._safely(self.queue.dead_letter(delivery, reason))
        try:
            gateway, route = await self._destination(turn)
        except Exception as exc:  # no gateway runs its channel: the failure is stored all the same
            log.warning("turn %s gave up, and nobody can be told: %r", turn.turn_id, exc)
            gateway, route = turn.gateway, None
        attempt = turn.revived * ATTEMPTS_PER_REQUEUE + delivery.deliveries
        # stored first: once the user sees the apology, the logs show the failure too
        figures = ReplyFigures(latency_ms=_ms_since(turn.enqueued_at), model=self.backend.model)
        await self._safely(
            self.store.record_reply(
                turn.conversation_id, turn.message_id, "", figures, error=reason
            )
        )
        gave_up = ReplyDelta(turn.turn_id, 0, "", True, texts.GAVE_UP, attempt, route)
        await self._safely(self._sender(gateway)(gave_up))
        _settled(turn, "gave_up")

    async def _destination(self, turn: Turn) -> tuple[str, dict[str, Any] | None]:
        """The gateway a turn's reply goes to, and the route its first delta carries. A revived
        turn's gateway may be gone: it goes to one that runs its channel now. Raises
        QueueUnavailable (the turn is released, to wait) when none does."""
        if not (turn.revived and turn.route):
            return turn.gateway, None
        route = {**turn.route, "revived": turn.revived}
        if turn.route.get("gateway"):  # only the gateway that took it can show it (the console)
            return turn.gateway, route
        if turn.gateway and await self.queue.gateway_alive(turn.gateway):
            return turn.gateway, route  # the gateway that took it runs: it may be showing it
        platform = str(turn.route.get("platform", ""))
        live = await self.queue.gateway_for(platform)
        if live is None:
            raise QueueUnavailable(f"no gateway runs {platform} now")
        return live, route

    def _sender(
        self, gateway: str, entry_id: str | None = None
    ) -> Callable[[ReplyDelta], Awaitable[None]]:
        """Publishes a turn's deltas to ``gateway``; raises ``Fenced`` instead once another
        worker has taken the turn (entry ``entry_id``) over."""

        async def send(delta: ReplyDelta) -> None:
            if entry_id is not None and entry_id in self._fenced:
                raise Fenced(entry_id)
            await self.queue.publish(gateway, delta)

        return send

    async def _safely(self, action: Awaitable[object]) -> None:
        """Await a bookkeeping step whose failure must not kill the worker (it is logged)."""
        try:
            await action
        except Exception as exc:
            log.warning("queue or storage step failed: %r", exc)


def _settled(turn: Turn, outcome: str, figures: ReplyFigures | None = None) -> None:
    """Count a settled turn (``frontdesk_turns``), and what its generation took."""
    platform = metrics.platform_of(turn)
    metrics.TURNS.labels(platform, outcome).inc()
    log.debug("turn %s settled: %s", turn.turn_id, outcome)
    if figures is None:
        return
    if figures.ttft_ms is not None:
        metrics.FIRST_TOKEN.labels(platform).observe(figures.ttft_ms / 1000)
    metrics.TURN_SECONDS.labels(platform).observe(_ms_since(turn.enqueued_at) / 1000)
    metrics.TOKENS.labels("in").inc(figures.tokens_in or 0)
    metrics.TOKENS.labels("out").inc(figures.tokens_out or 0)


def _first_anchor(messages: list[ChatMessage], offset: int) -> int:
    """Where ``build_prompt`` starts counting cuts in ``messages`` read from ``offset``."""
    start = min(-offset % ANCHOR_EVERY, len(messages) - 1)
    while start < len(messages) - 1 and messages[start].role != "user":
        start += 1
    return start


def _message_id(delivery: Delivery) -> int:
    return delivery.turn.message_id if delivery.turn is not None else 0


def _swept_turn(message: AwaitingMessage) -> Turn:
    """The turn that answers a message the sweep found, with the message's route on it. On a
    channel any gateway can post to, its reply goes like a revived turn's (to a gateway that
    runs the channel now); else only to the gateway that took the message, named in the route
    (a restarted shell shows the reply it was cut off in)."""
    route = dict(message.route)
    gateway = str(route.pop("gateway", ""))
    if not route.pop("anywhere", False):
        route["gateway"] = gateway
    return Turn(
        message.conversation_id,
        message.message_id,
        gateway=gateway,
        turn_id=turn_id_of(message.message_id),
        route=route,
        revived=sweep_revival(),
    )


def sweep_revival(now: float | None = None) -> int:
    """The revival a sweep gives the turn it queues: higher than any earlier sweep's."""
    return max(1, int(now if now is not None else time.time()) - SWEEP_EPOCH_S)


def _ms_since(epoch_s: float) -> float:
    return max(0.0, (time.time() - epoch_s) * 1000)
