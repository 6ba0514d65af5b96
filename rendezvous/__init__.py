"""callpeer's rendezvous server: STUN Binding, presence, and introducing two callers at once."""
