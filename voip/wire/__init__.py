"""Wire formats, sans-IO: STUN, RTP, RTCP and callpeer's signalling messages."""
