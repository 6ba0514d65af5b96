"""callpeer: peer-to-peer voice calls through NATs, with a report of what going direct gains."""

from voip.call import Call, CallError, CallOptions
from voip.media.audio_io import NullSink, SilenceSource, ToneSource, WavSink, WavSource
from voip.report import CallReport

__all__ = [
    "Call",
    "CallError",
    "CallOptions",
    "CallReport",
    "NullSink",
    "SilenceSource",
    "ToneSource",
    "WavSink",
    "WavSource",
]
