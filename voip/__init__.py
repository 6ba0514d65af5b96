"""callpeer: peer-to-peer voice calls through NATs, with a report of what going direct gains."""

from voip.call import Call
from voip.call import CallError
from voip.call import CallOptions
from voip.media.audio_io import NullSink
from voip.media.audio_io import SilenceSource
from voip.media.audio_io import ToneSource
from voip.media.audio_io import WavSink
from voip.media.audio_io import WavSource
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
