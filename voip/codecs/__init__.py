"""Audio codecs: the Opus wrapper and PCM helpers (no I/O)."""
