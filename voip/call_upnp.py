"""A call's UPnP IGD mapping, over asyncio: asked beside PCP and NAT-PMP, renewed, deleted.

UPnP speaks HTTP to the router, so it cannot go through the call's sans-IO core the way PCP and
NAT-PMP do (voip/nat/port_mapper.py); this asks it (voip/nat/upnp_client.py) when the call
starts and tells the core's `PortMapper` what came of it, which holds the ask for the peer
back UPNP_WAIT for it. Whichever of PCP, NAT-PMP and UPnP opens a port first is offered; a
UPnP mapping that comes second is deleted at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from voip.nat.port_mapper import LIFETIME
from voip.nat.port_mapper import PortMapper
from voip.nat.upnp_client import UpnpError
from voip.nat.upnp_client import UpnpMapping
from voip.nat.upnp_client import map_port

log = logging.getLogger(__name__)
DELETE_WAIT = 1.0  # s at hangup for the router to take the delete (its lease ends it anyway)


class CallUpnp:
    def __init__(self, mapper: PortMapper, changed: Callable[[], None]):
        self.mapper = mapper
        self.changed = changed  # the core has news: run its timer now
        self.mapping: UpnpMapping | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.mapper.upnp_asking(asyncio.get_running_loop().time())
        self._task = asyncio.ensure_future(self._run())

    async def close(self) -> None:
        """The call is over: stop asking or renewing, and delete what the router opened."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.mapping is not None:
            await self._delete(self.mapping)
            self.mapping = None

    async def _run(self) -> None:
        m = self.mapper
        try:
            mapping = await map_port(m.gateway[0], m.client_ip, m.internal_port, LIFETIME)
        except UpnpError as exc:
            m.upnp_failed(str(exc))
            self.changed()
            return
        if not m.upnp_mapped(mapping.public, mapping.lifetime):
            await self._delete(mapping)  # PCP or NAT-PMP was first
            return
        self.mapping = mapping
        self.changed()
        while mapping.lifetime > 0:  # 0: a permanent lease, deleted at the end only
            await asyncio.sleep(max(mapping.lifetime / 2, 1.0))
            try:
                await mapping.renew()
            except UpnpError as exc:  # it lasts its lifetime; a new port would not be offered
                log.info("the router did not renew the call's UPnP mapping: %s", exc)
                return

    @staticmethod
    async def _delete(mapping: UpnpMapping) -> None:
        try:
            await asyncio.wait_for(mapping.delete(), DELETE_WAIT)
        except (UpnpError, TimeoutError) as exc:
            log.info("the router did not take the UPnP delete: %s", exc)
