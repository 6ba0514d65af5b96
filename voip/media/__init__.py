"""Media: RTP streams and their statistics, RTCP, the jitter buffer, audio sources and sinks."""
