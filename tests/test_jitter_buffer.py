"""The adaptive jitter buffer in simulated time: it learns jitter, hides it, shrinks back."""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence

from voip.media.jitter_buffer import AdaptiveJitterBuffer
from voip.media.jitter_buffer import Comfort
from voip.media.jitter_buffer import Expand
from voip.media.jitter_buffer import Frame
from voip.media.jitter_buffer import Gap

FRAME = 0.02


def payload(seq: int) -> bytes:
    return bytes([seq % 256]) * 60  # speech-sized: a 1-3 byte packet would be DTX comfort noise


def simulate(
    delays: Sequence[float | None], tick_offset: float = 0.0
) -> tuple[AdaptiveJitterBuffer, list[tuple[float, object]]]:
    """Packet i is sent at i*20 ms and arrives delays[i] later (None: lost). Playout ticks every
    20 ms from the first arrival. Returns the buffer and what each tick played."""
    jb = AdaptiveJitterBuffer(FRAME)
    events: list[tuple[float, int, int]] = []  # (time, kind 0=arrive 1=tick, seq)
    for seq, d in enumerate(delays):
        if d is not None:
            events.append((seq * FRAME + d, 0, seq))
    start = min(t for t, _, _ in events) + tick_offset
    n_ticks = len(delays) + 20
    events += [(start + k * FRAME + 1e-6, 1, k) for k in range(n_ticks)]
    played: list[tuple[float, object]] = []
    for t, kind, seq in sorted(events):
        if kind == 0:
            jb.push(seq, payload(seq), t)
        else:
            item = jb.pop(t)
            if item is not None:
                played.append((t, item))
    return jb, played


def concealed(played: list[tuple[float, object]], t0: float, t1: float) -> int:
    """Frames concealed between t0 and t1 (after t1 the simulated stream has ended)."""
    return sum(1 for t, item in played if t0 <= t < t1 and isinstance(item, (Gap, Expand)))


def test_a_perfect_network_needs_one_frame_and_conceals_nothing() -> None:
    jb, played = simulate([0.005] * 500)
    assert jb.target_frames == 1
    assert concealed(played, 0.0, 500 * FRAME) == 0
    frames = [item.seq for _, item in played if isinstance(item, Frame)]
    assert frames == list(range(500))


def test_20ms_of_jitter_is_hidden_once_adapted() -> None:
    rng = random.Random(1)
    jb, played = simulate([0.005 + rng.uniform(0, 0.020) for _ in range(1500)])  # 30 s
    # It starts at one frame and may expand while it learns; after 3 s, nothing is concealed.
    assert concealed(played, 3.0, 1500 * FRAME) == 0
    # The 95th percentile of 0-20 ms lateness fits in a frame; early expands added the slack.
    assert 1 <= jb.target_frames <= 2
    frames = [item.seq for _, item in played if isinstance(item, Frame)]
    assert frames == sorted(frames) and len(frames) >= 1500 - jb.dropped_to_shrink


def test_the_target_follows_jitter_up_and_back_down_smoothly() -> None:
    rng = random.Random(2)
    calm = [0.005] * 500
    rough = [0.005 + rng.uniform(0, 0.080) for _ in range(500)]
    jb, _ = simulate(calm + rough + calm * 3)
    history = jb.target_history
    peak = max(history)
    assert peak >= 4  # 80 ms of jitter needs 4 or more frames
    assert history[-1] <= 2  # and once calm again it comes back down
    # It moves a frame at a time as the histogram forgets, never jumping down all at once.
    drops = [a - b for a, b in itertools.pairwise(history) if a > b]
    assert max(drops) <= 2
    assert jb.dropped_to_shrink >= peak - 2  # the buffer itself shrank too, frame by frame


def test_lost_packets_are_gaps_with_the_next_packet_for_fec() -> None:
    rng = random.Random(3)
    delays: list[float | None] = [None if rng.random() < 0.05 else 0.005 for _ in range(1000)]
    lost = {i for i, d in enumerate(delays) if d is None}
    _, played = simulate(delays)
    gaps = [item for _, item in played if isinstance(item, Gap)]
    assert {g.seq for g in gaps} == lost - {999}  # the last one has nothing after it
    assert all(g.next_payload == payload(g.seq + 1) for g in gaps if g.seq + 1 not in lost)
    # A loss cannot be told from lateness until the next packet is in: the first one costs an
    # expand, which leaves the slack that makes every later loss a plain gap.
    expands = [t for t, item in played if isinstance(item, Expand) and t < 1000 * FRAME]
    assert len(expands) <= 2


def test_a_late_packet_after_an_expand_still_plays() -> None:
    delays = [0.005] * 100
    delays[50] = 0.045  # 40 ms later than the rest: the buffer runs dry waiting for it
    delays[51] = 0.026  # sent 20 ms after it, arriving just after it
    jb, played = simulate(delays)
    seqs = [item.seq for _, item in played if isinstance(item, Frame)]
    assert 50 in seqs and 51 in seqs  # waited for, not skipped
    assert jb.expands >= 1 and jb.late == 0


def test_an_outage_is_heard_once_not_twice() -> None:
    delays: list[float | None] = [0.005] * 300
    for seq in range(100, 125):  # 500 ms of nothing: a path that died, then came back
        delays[seq] = None
    jb, played = simulate(delays)
    run = longest = 0
    for _, item in played[: 300 - 10]:
        run = 0 if isinstance(item, Frame) else run + 1
        longest = max(longest, run)
    # The 25 frames of the outage are concealed while waiting; when audio resumes the hole
    # behind it is skipped, not concealed a second time.
    assert 24 <= longest <= 27
    assert jb.skipped >= 20
    frames = [item.seq for _, item in played if isinstance(item, Frame)]
    assert frames[-1] == 299 and 125 in frames


def test_dtx_silence_is_comfort_noise_not_loss_or_lateness() -> None:
    """Talk, then DTX: a 3-byte update every 400 ms (20 frames), the clock moving on while the
    sequence moves by one; then talk again. Nothing is concealed, the target stays one frame."""
    jb = AdaptiveJitterBuffer(FRAME)
    sends: list[tuple[int, int, bytes]] = []  # (sequence, frame index in time, payload)
    seq = 0
    for frame in range(300):
        talking = frame < 50 or frame >= 250
        if talking or frame % 20 == 10:
            sends.append((seq, frame, payload(seq) if talking else b"\x08\x0b\xa4"))
            seq += 1
    events = [(frame * FRAME + 0.005, 0, s, p, frame) for s, frame, p in sends]
    events += [(0.005 + k * FRAME + 1e-6, 1, k, b"", 0) for k in range(300)]
    played = []
    for t, kind, s, p, frame in sorted(events):
        if kind == 0:
            jb.push(s, p, t, timestamp=(12345 + 960 * frame) % 2**32)
        else:
            played.append(jb.pop(t))
    kinds = {type(item).__name__ for item in played if item is not None}
    assert "Comfort" in kinds
    assert sum(isinstance(i, Comfort) for i in played) >= 150
    assert not any(isinstance(i, (Gap, Expand)) for i in played)
    assert jb.target_frames == 1  # the 400 ms pauses were not taken for lateness
    frames = [i.seq for i in played if isinstance(i, Frame)]
    assert frames == list(range(seq))


def test_the_playout_clock_moves_off_the_edge_where_packets_land() -> None:
    """Packets landing 0.5 ms before the tick would be played now or a frame later by a
    millisecond of jitter; the clock moves its phase so they land MARGIN before it."""
    from voip.media.frame_clocks import FRAME_S
    from voip.media.frame_clocks import MARGIN
    from voip.media.frame_clocks import SAMPLES
    from voip.media.frame_clocks import PlayoutClock

    def run(early: float) -> PlayoutClock:
        clock = PlayoutClock(start=FRAME_S)
        for k in range(SAMPLES):  # packet k lands `early` before the k-th tick
            clock.arrived((k + 1) * FRAME_S - early)
            clock.tick(clock.next)
        return clock

    edge = run(0.0005)
    assert abs(edge.shifted - (MARGIN - 0.0005)) < 1e-9
    landing = (SAMPLES + 1) * FRAME_S - 0.0005  # where the next packet lands
    assert abs((edge.next - landing) % FRAME_S - MARGIN) < 1e-9
    assert run(0.008).shifted == 0.0  # already 8 ms early: left alone


def test_a_frame_clock_skips_a_stall_by_whole_frames_and_keeps_its_phase() -> None:
    """After a stall the clock skips ahead rather than burst, and its phase stays where the
    playout learned it (and where the peer learned our sends)."""
    from voip.media.frame_clocks import FRAME_S
    from voip.media.frame_clocks import FrameClock

    clock = FrameClock(start=0.0071)
    clock.tick(0.0071 + 0.5)  # woken half a second late
    assert 0.5071 < clock.next <= 0.5071 + FRAME_S + 1e-9
    assert abs((clock.next - 0.0071) / FRAME_S - round((clock.next - 0.0071) / FRAME_S)) < 1e-6
    due = clock.next
    clock.tick(due)  # and from there on, a frame at a time
    assert abs(clock.next - due - FRAME_S) < 1e-9


def test_the_opus_encoder_takes_frames_of_any_integer_layout() -> None:
    """The encoder copies each frame into its own buffer: a strided or non-native view
    codes as the same audio."""
    import numpy as np

    from voip.codecs.opus import OpusEncoder
    from voip.media.audio_io import ToneSource

    frames = [ToneSource(440).read() for _ in range(3)]
    plain, other = OpusEncoder(), OpusEncoder()
    for frame in frames:
        strided = np.repeat(frame, 2)[::2]
        assert plain.encode(frame) == other.encode(strided.astype(">i2"))
