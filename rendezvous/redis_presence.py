"""The asyncio link between a server's shared presence and Redis (--redis), through redis-py.

What the logic asks of the store (rendezvous/shared_presence.py) is sent in one pipeline per
turn of the event loop: every registration that arrived meanwhile, each one EVALSHA of the
register script (rendezvous/presence_scripts.py), one round trip for all of them. Handoffs go
out with PUBLISH on the holding server's channel; this server's channel is read by a task that
hands what comes to the logic. A store that fails or is slow (past STORE_TIMEOUT) fails the
registrations in flight, which their callers get as 508 and try again at their next refresh.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING

import redis.asyncio as redis_asyncio
from redis.exceptions import RedisError

from rendezvous.introductions import Handoff
from rendezvous.name_store import PROBATION
from rendezvous.name_store import SETTLED_AFTER
from rendezvous.name_store import TOUCH_INTERVAL
from rendezvous.presence_scripts import CHANNELS
from rendezvous.presence_scripts import LEAVE
from rendezvous.presence_scripts import REGISTER
from rendezvous.presence_scripts import TOUCH
from rendezvous.presence_scripts import owner_key
from rendezvous.presence_scripts import presence_key
from rendezvous.presence_scripts import server_channel
from rendezvous.shared_presence import Departure
from rendezvous.shared_presence import Registration
from rendezvous.shared_presence import SharedPresence
from rendezvous.shared_presence import Touch
from rendezvous.store_records import handoff_bytes
from voip.rate_log import RateLimitedLog

if TYPE_CHECKING:
    from rendezvous.server import RendezvousServer

log = logging.getLogger(__name__)

STORE_TIMEOUT = 5.0  # s for one pipeline; past it, its registrations are answered 508
RESUBSCRIBE_AFTER = 1.0  # s between attempts to hear our channel again after a failure
WATCH_EVERY = 10.0  # s between checks that Redis still counts us on our channel


ScriptArgs = list[str | bytes]


def script_limits(lifetime: float, max_age_days: int) -> tuple[str, ...]:
    """The register script's fixed arguments: the registration's time to live in ms, then how
    long a binding lives unseen (on probation, settled), when it settles, how often it is
    touched: rendezvous/name_store.py's rules, kept by Redis's key expiry."""
    return (
        str(int(lifetime * 1000)),
        str(min(PROBATION, max_age_days * 86400.0)),
        str(max_age_days * 86400.0),
        str(SETTLED_AFTER),
        str(TOUCH_INTERVAL),
    )


def register_call(
    op: Registration, server: str, limits: tuple[str, ...]
) -> tuple[list[str], ScriptArgs]:
    """KEYS and ARGV of the register script for `op`."""
    keys = [presence_key(op.name), owner_key(op.name), presence_key(op.wants or op.name)]
    args: ScriptArgs = [op.key, server, repr(op.wall), op.wants, op.call, op.intro, limits[0]]
    args += ["1" if op.may_claim else "0", *limits[1:], op.name, CHANNELS]
    return keys, args


def touch_call(
    ops: list[Touch], server: str, limits: tuple[str, ...]
) -> tuple[list[str], ScriptArgs]:
    """KEYS and ARGV of the touch script: every refresh of a flush in one call."""
    return [presence_key(op.name) for op in ops], [server, limits[0], *(op.key for op in ops)]


def lost_names(ops: list[Touch], reply: object) -> list[str]:
    """The names the touch script found gone; all of them when it failed (written again)."""
    if not isinstance(reply, list):
        return [op.name for op in ops]
    return [ops[i - 1].name for i in reply if isinstance(i, int) and 1 <= i <= len(ops)]


def leave_call(op: Departure, server: str) -> tuple[list[str], ScriptArgs]:
    return [presence_key(op.name)], [op.key, server]


class StoreUnreachable(Exception):
    """Redis could not be reached or refused us, in words a server operator can act on."""


class RedisPresence:
    """Carries one server's shared presence to Redis and back."""

    def __init__(
        self,
        url: str,
        shared: SharedPresence,
        answered: Callable[[int, object], None],
        handed: Callable[[bytes], None],
        lost: Callable[[list[str]], None],
        *,
        lifetime: float,
        max_age_days: int,
    ):
        self.url = url
        self.shared = shared
        self._answered = answered  # (token, reply or exception)
        self._handed = handed
        self._lost = lost  # names whose records a Touch found gone
        self._limits = script_limits(lifetime, max_age_days)
        self.client: redis_asyncio.Redis = redis_asyncio.from_url(url, decode_responses=False)
        self._register = self.client.register_script(REGISTER)
        self._leave = self.client.register_script(LEAVE)
        self._touch = self.client.register_script(TOUCH)
        self._flushing: asyncio.Task[None] | None = None
        self._listening: asyncio.Task[None] | None = None
        self._watching: asyncio.Task[None] | None = None
        self._failures = RateLimitedLog(log)
        self.round_trips = 0

    @staticmethod
    def new_server_id() -> str:
        return secrets.token_hex(8)

    async def start(self) -> None:
        """Reach Redis and hear our channel: StoreUnreachable if it cannot be reached."""
        try:
            await asyncio.wait_for(self.client.ping(), STORE_TIMEOUT)
            pubsub = self.client.pubsub()
            await pubsub.subscribe(server_channel(self.shared.server_id))
        except (RedisError, OSError, TimeoutError) as exc:
            await self.client.aclose()
            raise StoreUnreachable(
                f"cannot reach Redis at {self.url}: {exc or 'timed out'}"
            ) from exc
        loop = asyncio.get_running_loop()
        self._listening = loop.create_task(self._listen(pubsub))
        self._watching = loop.create_task(self._watch())
        self.shared.wake = self._wake

    def _wake(self) -> None:
        if self._flushing is None or self._flushing.done():
            self._flushing = asyncio.get_running_loop().create_task(self._flush())

    async def _flush(self) -> None:
        """Every op waiting, one pipeline per round trip, until none waits."""
        while ops := self.shared.take_ops():
            tokens: list[int] = []
            pipe = self.client.pipeline(transaction=False)
            for op in ops:
                if isinstance(op, Registration):
                    tokens.append(op.token)
                    keys, args = register_call(op, self.shared.server_id, self._limits)
                    await self._register(keys=keys, args=args, client=pipe)
                elif isinstance(op, Departure):
                    tokens.append(0)
                    keys, args = leave_call(op, self.shared.server_id)
                    await self._leave(keys=keys, args=args, client=pipe)
                elif isinstance(op, Handoff):
                    tokens.append(0)
                    pipe.publish(server_channel(op.server), handoff_bytes(op))
            # One touch per name however many refreshes came (a client's retransmissions).
            touched = list({op.name: op for op in ops if isinstance(op, Touch)}.values())
            if touched:
                tokens.append(-1)
                keys, args = touch_call(touched, self.shared.server_id, self._limits)
                await self._touch(keys=keys, args=args, client=pipe)
            try:
                replies: list[object] = await asyncio.wait_for(
                    pipe.execute(raise_on_error=False), STORE_TIMEOUT
                )
            except (RedisError, OSError, TimeoutError) as exc:
                self._failures.warning("Redis failed: %s", exc or "timed out")
                replies = [exc] * len(tokens)
            self.round_trips += 1
            for token, reply in zip(tokens, replies, strict=True):
                if token == -1:
                    self._lost(lost_names(touched, reply))
                elif token:
                    self._answered(token, reply)
                elif isinstance(reply, BaseException):
                    self._failures.warning("Redis refused a departure or handoff: %s", reply)

    async def _listen(self, pubsub: redis_asyncio.client.PubSub) -> None:
        channel = server_channel(self.shared.server_id)
        while True:
            try:
                async for message in pubsub.listen():
                    if message.get("type") == "message" and isinstance(message["data"], bytes):
                        self._handed(message["data"])
            except (RedisError, OSError) as exc:
                self._failures.warning("Redis channel lost: %s", exc)
                await asyncio.sleep(RESUBSCRIBE_AFTER)
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.subscribe(channel)

    async def _watch(self) -> None:
        """Whether Redis still counts us on our channel: a connection that died without a
        word (a partition, a failover to another host) leaves the listener waiting forever,
        and every handoff to us unheard. Then a new subscription."""
        channel = server_channel(self.shared.server_id)
        while True:
            await asyncio.sleep(WATCH_EVERY)
            try:
                counts = await asyncio.wait_for(self.client.pubsub_numsub(channel), STORE_TIMEOUT)
                if any(count for _, count in counts):
                    continue
                self._failures.warning(
                    "Redis no longer counts us on %s: subscribing again", channel
                )
                if self._listening is not None:
                    self._listening.cancel()
                pubsub = self.client.pubsub()
                await asyncio.wait_for(pubsub.subscribe(channel), STORE_TIMEOUT)
                self._listening = asyncio.get_running_loop().create_task(self._listen(pubsub))
            except (RedisError, OSError, TimeoutError) as exc:
                self._failures.warning("Redis unreachable: %s", exc or "timed out")

    async def close(self) -> None:
        for task in (self._flushing, self._listening, self._watching):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        with contextlib.suppress(RedisError, OSError):
            await self.client.aclose()


async def share_presence(server: RendezvousServer, url: str, max_age_days: int) -> RedisPresence:
    """Move the server's names and asks to Redis at `url` (its own callers stay its own): the
    link, started; StoreUnreachable if Redis cannot be reached."""
    logic = server.logic
    shared = SharedPresence(RedisPresence.new_server_id(), logic.stats)
    failures = RateLimitedLog(log)

    def now() -> float:
        return asyncio.get_running_loop().time()  # the server's clock: its loop's

    def answered(token: int, reply: object) -> None:
        try:
            server.deliver(shared.answered(logic, token, reply, now()))
        except Exception:  # as a datagram handler: counted and logged, never raised
            failures.warning("a store reply could not be handled", exc_info=True)

    def handed(data: bytes) -> None:
        try:
            server.deliver(shared.handed(logic, data, now()))
        except Exception:
            failures.warning("a handoff could not be handled", exc_info=True)

    def lost(names: list[str]) -> None:
        try:
            shared.lost(logic, names, now())
        except Exception:
            failures.warning("lost records could not be written again", exc_info=True)

    link = RedisPresence(
        url,
        shared,
        answered,
        handed,
        lost,
        lifetime=logic.registry.lifetime,
        max_age_days=max_age_days,
    )
    await link.start()
    logic.shared = shared
    return link
