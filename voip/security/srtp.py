"""SRTP and SRTCP with AEAD_AES_128_GCM (RFC 3711, RFC 7714) through libsrtp 2 (pylibsrtp).

One `MediaCipher` per call: an outbound context under our key and an inbound one under the
peer's, each 16 bytes of master key and 12 of master salt from the handshake
(voip/security/handshake.py). The RTP header stays readable (so the path can still be told and
Wireshark still sees SRTP) but is authenticated; the payload is encrypted. libsrtp keeps the
replay window (RFC 3711 §3.3.2): a packet that fails authentication or repeats one already
accepted is counted and dropped, never played.
"""

from __future__ import annotations

from collections.abc import Callable

import pylibsrtp

from voip.wire.rtp import is_rtcp

CIPHER = "AES-128-GCM"  # the name shown to users: SRTP's AEAD_AES_128_GCM
KEY_MATERIAL_BYTES = 28  # 16-byte master key + 12-byte master salt (RFC 7714 §12)
REPLAY_WINDOW = 1024  # packets; 20 s of audio out of order is more than any path reorders


class MediaCipher:
    def __init__(self, local_key: bytes, remote_key: bytes):
        if len(local_key) != KEY_MATERIAL_BYTES or len(remote_key) != KEY_MATERIAL_BYTES:
            raise ValueError(f"SRTP key material is {KEY_MATERIAL_BYTES} bytes")
        self._out = pylibsrtp.Session(_policy(local_key, pylibsrtp.Policy.SSRC_ANY_OUTBOUND))
        self._in = pylibsrtp.Session(_policy(remote_key, pylibsrtp.Policy.SSRC_ANY_INBOUND))
        self.rejected = 0  # failed authentication, replayed, or not SRTP at all
        self.unsent = 0  # ours that libsrtp refused to protect: a bug of ours if ever not 0

    def protect(self, packet: bytes) -> bytes | None:
        """RTP or RTCP (told apart by its payload type, RFC 5761) made SRTP or SRTCP; None for
        a packet libsrtp will not send (a repeated index would reuse a GCM nonce)."""
        out = _through(self._out.protect_rtcp if is_rtcp(packet) else self._out.protect, packet)
        self.unsent += out is None
        return out

    def unprotect_untrusted(self, packet: bytes) -> bytes | None:
        """The plain RTP or RTCP inside an authentic, fresh packet from the peer; else None."""
        side = self._in
        out = _through(side.unprotect_rtcp if is_rtcp(packet) else side.unprotect, packet)
        self.rejected += out is None
        return out


def _through(step: Callable[[bytes], bytes], packet: bytes) -> bytes | None:
    """libsrtp's answer, or None where it refused (its refusals are errors, not results)."""
    try:
        return step(packet)
    except (pylibsrtp.Error, ValueError):
        return None


def _policy(key: bytes, ssrc_type: int) -> pylibsrtp.Policy:
    policy = pylibsrtp.Policy(
        key=key, ssrc_type=ssrc_type, srtp_profile=pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_128_GCM
    )
    policy.window_size = REPLAY_WINDOW
    return policy
