"""The maps of the kernel TURN channel fast path (rendezvous/bpf/channel_relay.c), from Python.

The bpf(2) system call through ctypes: open a pinned map (BPF_OBJ_GET), look up, update,
delete and walk its entries, so adding or removing a channel (RFC 8656 section 12) costs a
few system calls and no subprocess. The byte layouts below mirror the structs in the C
source; addresses, ports and channel numbers are stored in network byte order, counters in
the host's.
"""

from __future__ import annotations

import ctypes
import errno
import ipaddress
import os
import platform
import struct
from collections.abc import Iterator

Address = tuple[str, int]

# bpf(2) commands (linux/bpf.h, enum bpf_cmd).
_MAP_LOOKUP_ELEM = 1
_MAP_UPDATE_ELEM = 2
_MAP_DELETE_ELEM = 3
_MAP_GET_NEXT_KEY = 4
_OBJ_GET = 7
_BPF_ANY = 0

# The bpf(2) system call number per machine (unistd.h).
_SYSCALL_NUMBERS = {"x86_64": 321, "aarch64": 280, "armv7l": 386, "riscv64": 280, "ppc64le": 361}
_ATTR_SIZE = 128  # larger than every attribute we pass; the kernel wants the rest zeroed

C2P_KEY = struct.Struct("=4s2s2s")  # client ip, client port, channel
C2P_VALUE = struct.Struct("=4s4s2s2sIQQ")  # relayed ip, peer ip, relayed port, peer port, -, n, B
P2C_KEY = struct.Struct("=4s4s2s2s")  # relayed ip, peer ip, relayed port, peer port
P2C_VALUE = struct.Struct("=4s2s2sQQ")  # client ip, client port, channel, packets, bytes
CONFIG_VALUE = struct.Struct("=4s2sH")  # server ip (0: any), server port, -
CONFIG_KEY = struct.Struct("=I")


class BpfError(OSError):
    """A bpf(2) call failed."""


def ipv4(address: Address) -> tuple[bytes, bytes]:
    """(ip, port) as the 4 + 2 bytes the maps hold; ValueError unless an IPv4 address."""
    host, port = address
    ip = ipaddress.ip_address(host)
    if not isinstance(ip, ipaddress.IPv4Address):
        raise ValueError(f"the kernel fast path relays IPv4 only, not {host}")
    if not 0 <= port <= 0xFFFF:
        raise ValueError(f"bad port {port}")
    return ip.packed, port.to_bytes(2, "big")


def c2p_key(client: Address, channel: int) -> bytes:
    ip, port = ipv4(client)
    return C2P_KEY.pack(ip, port, channel.to_bytes(2, "big"))


def c2p_value(relayed: Address, peer: Address) -> bytes:
    relayed_ip, relayed_port = ipv4(relayed)
    peer_ip, peer_port = ipv4(peer)
    return C2P_VALUE.pack(relayed_ip, peer_ip, relayed_port, peer_port, 0, 0, 0)


def p2c_key(relayed: Address, peer: Address) -> bytes:
    relayed_ip, relayed_port = ipv4(relayed)
    peer_ip, peer_port = ipv4(peer)
    return P2C_KEY.pack(relayed_ip, peer_ip, relayed_port, peer_port)


def p2c_value(client: Address, channel: int) -> bytes:
    ip, port = ipv4(client)
    return P2C_VALUE.pack(ip, port, channel.to_bytes(2, "big"), 0, 0)


def config_value(server: Address) -> bytes:
    ip, port = ipv4(server)
    return CONFIG_VALUE.pack(ip, port, 0)


def value_counters(value: bytes) -> tuple[int, int]:
    """(packets, bytes) from a c2p or p2c value: its last two 64-bit fields."""
    packets, nbytes = struct.unpack_from("=QQ", value, len(value) - 16)
    return packets, nbytes


class _Bpf:
    """The bpf(2) system call, found once."""

    def __init__(self) -> None:
        number = _SYSCALL_NUMBERS.get(platform.machine())
        if number is None:
            raise BpfError(errno.ENOSYS, f"no bpf(2) number known for {platform.machine()}")
        self.number = number
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.libc.syscall.restype = ctypes.c_long

    def call(self, cmd: int, attr: ctypes.Array[ctypes.c_char]) -> int:
        ret = int(self.libc.syscall(self.number, cmd, attr, _ATTR_SIZE))
        if ret < 0:
            err = ctypes.get_errno()
            raise BpfError(err, os.strerror(err))
        return ret


_bpf: _Bpf | None = None


def _syscall() -> _Bpf:
    global _bpf  # noqa: PLW0603 - one lazily made handle on libc for the process
    if _bpf is None:
        _bpf = _Bpf()
    return _bpf


class BpfMap:
    """One pinned map, opened by path, with fixed key and value sizes."""

    def __init__(self, path: str, key_size: int, value_size: int) -> None:
        self.path = path
        self.key_size = key_size
        self.value_size = value_size
        name = ctypes.create_string_buffer(os.fsencode(path))
        attr = ctypes.create_string_buffer(_ATTR_SIZE)
        struct.pack_into("=Q", attr, 0, ctypes.addressof(name))
        self.fd = _syscall().call(_OBJ_GET, attr)

    def _elem_attr(
        self, key: bytes, value: ctypes.Array[ctypes.c_char] | None, flags: int = 0
    ) -> tuple[ctypes.Array[ctypes.c_char], ctypes.Array[ctypes.c_char]]:
        if len(key) != self.key_size:
            raise ValueError(f"key of {len(key)} bytes for a map with {self.key_size}")
        key_buf = ctypes.create_string_buffer(key, self.key_size)
        attr = ctypes.create_string_buffer(_ATTR_SIZE)
        value_ptr = ctypes.addressof(value) if value is not None else 0
        struct.pack_into("=IIQQQ", attr, 0, self.fd, 0, ctypes.addressof(key_buf), value_ptr, flags)
        return attr, key_buf  # the key buffer must outlive the call

    def lookup(self, key: bytes) -> bytes | None:
        value = ctypes.create_string_buffer(self.value_size)
        attr, _key = self._elem_attr(key, value)
        return value.raw if _found(_MAP_LOOKUP_ELEM, attr) else None

    def update(self, key: bytes, value: bytes) -> None:
        if len(value) != self.value_size:
            raise ValueError(f"value of {len(value)} bytes for a map with {self.value_size}")
        buf = ctypes.create_string_buffer(value, self.value_size)
        attr, _key = self._elem_attr(key, buf, _BPF_ANY)
        _syscall().call(_MAP_UPDATE_ELEM, attr)

    def delete(self, key: bytes) -> bool:
        """Remove an entry; False when there was none."""
        attr, _key = self._elem_attr(key, None)
        return _found(_MAP_DELETE_ELEM, attr)

    def walk(self) -> Iterator[bytes]:
        """Every key, walked with BPF_MAP_GET_NEXT_KEY (entries may come and go meanwhile)."""
        previous: bytes | None = None
        while True:
            following = ctypes.create_string_buffer(self.key_size)
            key = previous if previous is not None else bytes(self.key_size)
            attr, _key = self._elem_attr(key, following)
            if previous is None:
                struct.pack_into("=Q", attr, 8, 0)  # no key: start at the first entry
            try:
                _syscall().call(_MAP_GET_NEXT_KEY, attr)
            except BpfError as exc:
                if exc.errno == errno.ENOENT:
                    return
                raise
            previous = following.raw
            yield previous

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _found(command: int, attr: ctypes.Array[ctypes.c_char]) -> bool:
    """Run a map command on one key: False when the key is not in the map (ENOENT)."""
    try:
        _syscall().call(command, attr)
    except BpfError as exc:
        if exc.errno == errno.ENOENT:
            return False
        raise
    return True
