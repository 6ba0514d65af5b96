"""How a direct path was found, in the report's words: which technique opened it."""

from __future__ import annotations

from voip.nat.connector import Connector
from voip.nat.pairs import Pair
from voip.nat.pairs import PathKind
from voip.wire.candidates import CandidateType


def found_by(pair: Pair, connector: Connector) -> str | None:
    """To the peer's own address (a LAN we share, or a peer with no NAT), "punched", by
    birthday punching, at a predicted port, or through a port a router opened on request, the
    peer's or ours (the peer saw us at our mapping, or at a port we predicted)."""
    if pair.kind != PathKind.DIRECT:
        return None
    if (birthday := connector.hard.found(pair)) is not None:
        return birthday
    if pair.remote.kind == CandidateType.MAPPED:
        return "the peer's port mapping"
    if pair.remote.kind == CandidateType.PREDICTED:
        return "the peer's predicted port"
    mapper = connector.port_mapper
    if mapper is not None and mapper.public is not None and pair.mapped == mapper.public:
        return f"our port mapping ({mapper.protocol})"
    predicted = connector.probe.offered if connector.probe is not None else ()
    if pair.mapped is not None and pair.mapped in {c.address for c in predicted}:
        return "our predicted port"
    return "the peer's host address" if pair.remote.kind == CandidateType.HOST else "punched"
