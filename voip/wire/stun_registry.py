"""STUN's numbers: message classes, methods and attribute types (RFC 8489 §18; callpeer's own).

The IANA registries for STUN methods and attributes, with what RFC 5780, RFC 8445 and RFC 8656
add, and callpeer's signalling in ranges nobody else uses.
"""

from __future__ import annotations

from enum import IntEnum


class Class(IntEnum):
    REQUEST = 0b00
    INDICATION = 0b01
    SUCCESS = 0b10
    ERROR = 0b11


class Method(IntEnum):
    BINDING = 0x001
    # TURN, RFC 8656 §17
    ALLOCATE = 0x003
    REFRESH = 0x004
    SEND = 0x006
    DATA = 0x007
    CREATE_PERMISSION = 0x008
    CHANNEL_BIND = 0x009
    # callpeer signalling with the rendezvous server; unassigned by IANA, used only between
    # callpeer and its own server, on the same socket as everything else.
    CP_REGISTER = 0x0C1
    CP_LEAVE = 0x0C2
    CP_PEER_READY = 0x0C3


class Attr(IntEnum):
    MAPPED_ADDRESS = 0x0001
    CHANGE_REQUEST = 0x0003  # RFC 5780
    USERNAME = 0x0006
    MESSAGE_INTEGRITY = 0x0008
    ERROR_CODE = 0x0009
    UNKNOWN_ATTRIBUTES = 0x000A
    CHANNEL_NUMBER = 0x000C
    LIFETIME = 0x000D
    XOR_PEER_ADDRESS = 0x0012
    DATA = 0x0013
    REALM = 0x0014
    NONCE = 0x0015
    XOR_RELAYED_ADDRESS = 0x0016
    REQUESTED_ADDRESS_FAMILY = 0x0017  # RFC 8656
    EVEN_PORT = 0x0018  # RFC 8656
    REQUESTED_TRANSPORT = 0x0019
    DONT_FRAGMENT = 0x001A  # RFC 8656
    RESERVATION_TOKEN = 0x0022  # RFC 8656
    MESSAGE_INTEGRITY_SHA256 = 0x001C
    USERHASH = 0x001E
    XOR_MAPPED_ADDRESS = 0x0020
    PRIORITY = 0x0024  # RFC 8445
    USE_CANDIDATE = 0x0025  # RFC 8445
    PADDING = 0x0026  # RFC 5780
    RESPONSE_PORT = 0x0027  # RFC 5780
    ADDITIONAL_ADDRESS_FAMILY = 0x8000  # RFC 8656: a dual allocation, IPv4 and IPv6
    ADDRESS_ERROR_CODE = 0x8001  # RFC 8656: why the additional family was not allocated
    SOFTWARE = 0x8022
    ALTERNATE_SERVER = 0x8023
    FINGERPRINT = 0x8028
    ICE_CONTROLLED = 0x8029
    ICE_CONTROLLING = 0x802A
    RESPONSE_ORIGIN = 0x802B  # RFC 5780
    OTHER_ADDRESS = 0x802C  # RFC 5780
    # The same two at the codepoints of the TURN-bis drafts, which coturn (4.6) still uses.
    DRAFT_ADDITIONAL_ADDRESS_FAMILY = 0x8032
    DRAFT_ADDRESS_ERROR_CODE = 0x8033
    # callpeer signalling (comprehension-optional range, so a stranger's STUN stack ignores them)
    CP_NAME = 0xC001
    CP_PEER = 0xC002
    CP_CANDIDATE = 0xC003
    CP_LOCAL_UFRAG = 0xC004  # the sender's own ICE credentials, in the REGISTER that asks
    CP_LOCAL_PWD = 0xC005
    CP_REMOTE_UFRAG = 0xC006  # the peer's, handed on in PEER-READY
    CP_REMOTE_PWD = 0xC007
    CP_ROLE = 0xC008
    CP_STATUS = 0xC009
    CP_TURN_SERVER = 0xC00A  # the relay to allocate on, with short-lived credentials
    CP_TURN_USERNAME = 0xC00B
    CP_TURN_PASSWORD = 0xC00C
    CP_NAT_MAPPING = 0xC00D  # the sender's NAT mapping, as learned at registration
    CP_PEER_NAT_MAPPING = 0xC00E  # the peer's, handed on in PEER-READY
    CP_KEY = 0xC00F  # an X25519 public key: the caller's identity in REGISTER, the server's in
    # its answers (the 401 included)
    CP_PEER_KEY = 0xC010  # the peer's identity public key, handed on in PEER-READY
    CP_LOCAL_COMMIT = 0xC011  # our commitment to our call handshake's ephemeral, in REGISTER
    CP_REMOTE_COMMIT = 0xC012  # the peer's, handed on in PEER-READY
