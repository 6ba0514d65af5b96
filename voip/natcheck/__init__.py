"""`callpeer natcheck`: how a NAT maps, filters, hairpins, allocates ports and how long it keeps a
quiet mapping (RFC 5780, RFC 4787). `probing` runs the tests over real sockets, `verdict` turns
their results into plain words, `memory` keeps them for calls."""
