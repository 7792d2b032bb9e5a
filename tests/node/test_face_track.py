"""Keyframe detection with tracking (models.face.tracking, node.engines.face_track): accuracy
against synthetic 720p videos whose true box is known on every frame (tests/synthetic_face.py),
with an oracle detector that reads each frame's index from its pixels; and the cached track.

Accuracy is measured on the tracker's boxes (`TrackedFaces.boxes`, the track's `raw_boxes`):
the smoothing and chin padding applied after it are deliberate changes of the box, not errors.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from models.face import tracking
from node.engines import face_track
from node.engines.face_track import keyframe_finder, load_or_prepare, track_path
from tests.node.engine_checks import open_base
from tests.synthetic_face import OracleDetector, Shot, SyntheticFaceVideo, edited, talking_head

#: corners within this many pixels of the truth count as right (the issue's target)
TOLERANCE_PX = 2.0


def track(video: SyntheticFaceVideo, detector) -> tracking.TrackedFaces:
    """Run the production tracker over the video's frames, streamed, the detector reached through
    the production keyframe policy (scaled detection where the face size is known)."""
    tracker = tracking.KeyframeTracker(video.frame_count, video.width, video.height, keyframe_finder(detector))
    for frame in video.frames():
        tracker.push(frame)
    return tracker.result()


def score(video: SyntheticFaceVideo, faces: tracking.TrackedFaces) -> dict:
    truth_has = video.has_face()
    both = np.flatnonzero(truth_has & faces.has_face)
    errors = np.array([np.abs(faces.boxes[i] - video.true_box(i)).max() for i in both])
    return {"within": float((errors <= TOLERANCE_PX).mean()), "worst_px": float(errors.max()),
            "wrong_presence": np.flatnonzero(truth_has != faces.has_face).tolist(),
            "detected": float(faces.detected.mean())}


def assert_every_cut_starts_a_segment(video: SyntheticFaceVideo, faces: tracking.TrackedFaces) -> None:
    for cut in video.cuts:
        assert faces.detected[cut], f"cut at {cut} not detected: {tracking.REASONS[faces.reason[cut]]}"
        assert faces.segment[cut] != faces.segment[cut - 1] or not faces.has_face[cut], cut
    # and no segment reaches across a cut (smoothing and drift spreading stay inside one)
    shot_of = np.searchsorted(video.starts, np.arange(video.frame_count), side="right")
    for seg in set(faces.segment[faces.segment >= 0].tolist()):
        assert len(set(shot_of[faces.segment == seg].tolist())) == 1, seg


def test_edited_720p_video_with_pans_zoom_jitter_cuts_and_a_faceless_span():
    # Given 10 s of 720p: a panning talking head, a hard cut to another scene (the face elsewhere,
    # zooming out), a cut to a faceless scene, a cut back to the face with strong jitter
    video = edited(10.0)
    oracle = OracleDetector(video)
    faces = track(video, oracle)
    result = score(video, faces)
    print(f"edited 720p: {result['within']:.1%} of face frames within {TOLERANCE_PX} px, worst "
          f"{result['worst_px']:.2f} px, detector on {result['detected']:.1%} of frames ({oracle.calls} calls)")
    # Then >= 99 % of face frames have every corner within 2 px of the truth
    assert result["within"] >= 0.99, result
    # every cut starts a new track, detected on the cut frame itself; the faceless span is found
    # to the frame (all its transitions are hard cuts, so there is no ambiguous frame to allow)
    assert_every_cut_starts_a_segment(video, faces)
    assert result["wrong_presence"] == [], result
    # and the detector saw only the keyframes (a faceless one twice: a coarse look, then the
    # standard one), on at most 15 % of frames
    assert sorted(set(oracle.frames_seen)) == np.flatnonzero(faces.detected).tolist()
    assert result["detected"] <= 0.15 and oracle.calls / video.frame_count <= 0.15, (result, oracle.calls)


def test_talking_head_is_detected_on_at_most_15_percent_of_frames():
    # Given 10 s of 720p talking head (mouth moving, slow pan and zoom, light jitter)
    video = talking_head(10.0)
    oracle = OracleDetector(video)
    faces = track(video, oracle)
    result = score(video, faces)
    print(f"talking head 720p: {result['within']:.1%} within {TOLERANCE_PX} px, worst {result['worst_px']:.2f} px, "
          f"detector on {result['detected']:.1%} of frames ({oracle.calls} calls)")
    assert result["detected"] <= 0.15 and oracle.calls == int(faces.detected.sum())
    assert result["within"] >= 0.99 and result["wrong_presence"] == [], result
    # one continuous track: the scheduled keyframes corrected its drift without breaking it
    assert set(faces.segment.tolist()) == {1}
    assert set(faces.reason[faces.detected].tolist()) <= {tracking.FIRST, tracking.SCHEDULED}


def test_a_jump_vanish_and_return_within_one_scene_are_each_detected_on_their_frame():
    # Given one scene throughout (no histogram-level cut): the face jumps across the frame,
    # vanishes, and comes back elsewhere; only the flow and appearance checks can see these
    video = SyntheticFaceVideo([
        Shot(30, 0, ((0.0, 0.30, 0.45, 0.30), (1.0, 0.32, 0.45, 0.30))),
        Shot(30, 0, ((0.0, 0.70, 0.50, 0.30), (1.0, 0.68, 0.50, 0.31))),
        Shot(20, 0, None),
        Shot(30, 0, ((0.0, 0.50, 0.40, 0.28), (1.0, 0.52, 0.40, 0.28))),
    ])
    faces = track(video, OracleDetector(video))
    result = score(video, faces)
    assert_every_cut_starts_a_segment(video, faces)
    assert result["wrong_presence"] == [] and result["within"] >= 0.99, result
    # between the transitions the faceless span was carried over, not re-detected every frame
    assert faces.detected[61:80].sum() <= 1


def test_an_untrackable_face_is_detected_on_every_frame():
    # Given a detector that claims a face on a flat grey picture (no feature to follow)
    calls = []
    tracker = tracking.KeyframeTracker(6, 640, 360, lambda frame, expected: calls.append(expected) or (100, 80, 300, 280))
    for _ in range(6):
        tracker.push(np.full((360, 640, 3), 120, np.uint8))
    faces = tracker.result()
    # Then the tracker falls back to detecting every frame rather than guess, with the size hint
    assert faces.detected.all() and faces.has_face.all() and len(calls) == 6
    assert set(faces.segment.tolist()) == {1}  # one face: its detections are smoothed together
    assert calls[0] is None and all(c == (100, 80, 300, 280) for c in calls[1:])


def test_keyframes_with_a_known_face_detect_on_a_smaller_frame():
    video = talking_head(0.2)
    frame, truth = video.frame(3), video.true_box(3)
    shown: list[int] = []
    oracle = OracleDetector(video)

    def detector(frames):
        shown.append(frames.shape[2])
        return oracle(frames)

    find = keyframe_finder(detector)
    # Then with the face's size known it is detected at KEYFRAME_FACE_PX, on a frame under 640 px
    box = find(frame, tuple(truth))
    side = min(truth[2] - truth[0], truth[3] - truth[1])
    scale = max(face_track.KEYFRAME_FACE_PX / side, face_track.KEYFRAME_MIN_SIDE / 720)
    assert shown == [round(1280 * scale)] and shown[0] < 400
    assert np.abs(np.array(box) - truth).max() < 0.01
    # and with nothing known, a coarse look first (half of 640, kept >= 192 px high) finds it
    shown.clear()
    assert np.abs(np.array(find(frame, None)) - truth).max() < 0.01
    assert shown == [round(1280 * face_track.KEYFRAME_MIN_SIDE / 720)]
    # and a miss at a reduced scale is retried at the standard one: scaling never loses a face
    for expected in (tuple(truth), None):
        shown.clear()
        box = keyframe_finder(lambda f: detector(f) if f.shape[2] == 640 else [None] * len(f))(frame, expected)
        assert len(shown) == 1 and shown[-1] == 640 and np.abs(np.array(box) - truth).max() < 0.01


def test_smoothing_averages_detections_within_their_segment_only():
    # Given two segments of per-frame detections (a face the flow could not follow), a cut between
    raw = np.array([[0, 0, 10, 10], [2, 0, 12, 10]] * 2 + [[500, 300, 600, 400]] * 4, np.float64)
    found, detected = np.ones(8, bool), np.ones(8, bool)
    segment = np.array([1] * 4 + [2] * 4, np.int32)
    smoothed = face_track._smooth(raw, found, segment, detected)
    # Then the jitter is averaged out but nothing is pulled across the cut
    assert np.allclose(smoothed[:4, 0], [2 / 3, 1.0, 1.0, 4 / 3]) and np.array_equal(smoothed[4:], raw[4:])
    assert face_track._smooth(raw, found)[3, 0] > 100  # what ignoring segments would do
    # and tracked frames keep their boxes: they follow the face, smoothing would make them lag it
    detected[1:3] = False
    assert np.array_equal(face_track._smooth(raw, found, segment, detected)[1:3], raw[1:3])


# --- the cached track ---------------------------------------------------------------------------


@pytest.fixture
def synthetic_base(tmp_path, settings, ffprobe):
    video = talking_head(2.0, width=480, height=270)
    return video, open_base(video.write_mp4(tmp_path / "talking.mp4"), settings)


def test_cached_track_records_detected_and_tracked_frames(synthetic_base, settings):
    video, base = synthetic_base
    oracle = OracleDetector(video)
    made = []
    track_ = load_or_prepare(base, lambda: made.append(1) or oracle, "oracle", settings.avatar_cache_dir)
    assert made == [1] and not track_.cache_hit
    # Then the detected frames are exactly those the detector was shown; the rest were tracked
    detected = np.flatnonzero(track_.reason != tracking.TRACKED)
    assert detected.tolist() == sorted(set(oracle.frames_seen)) and detected[0] == 0 and detected[-1] == 49
    assert 0 < len(detected) <= 0.15 * len(base) and track_.segment.min() == 1
    assert np.abs(track_.raw_boxes - np.stack([video.true_box(i) for i in range(50)])).max() <= TOLERANCE_PX
    path = track_path(settings.avatar_cache_dir, base, "oracle")
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["detected_frames"] == len(detected) and meta["detector_calls"] == oracle.calls
    # When it is read again, the detector factory is never called
    again = load_or_prepare(base, lambda: pytest.fail("cache hit called the detector factory"), "oracle",
                            settings.avatar_cache_dir)
    assert again.cache_hit
    for name in ("boxes", "has_face", "crops", "reason", "segment", "raw_boxes"):
        assert np.array_equal(getattr(again, name), getattr(track_, name)), name


@pytest.mark.parametrize("change", [(face_track, "TRACK_VERSION"), (tracking, "TRACKER_VERSION"),
                                    (tracking, "KEYFRAME_INTERVAL"), (face_track, "KEYFRAME_FACE_PX")])
def test_a_version_or_keyframe_setting_change_invalidates_the_track(synthetic_base, settings, monkeypatch, change):
    _, base = synthetic_base
    before = track_path(settings.avatar_cache_dir, base, "oracle")
    module, name = change
    monkeypatch.setattr(module, name, getattr(module, name) + 1)
    assert track_path(settings.avatar_cache_dir, base, "oracle") != before


def test_preparation_reads_the_frames_a_batch_at_a_time(synthetic_base, settings):
    video, base = synthetic_base
    taken = []
    original = base.take
    base.take = lambda idx: taken.append(len(idx)) or original(idx)
    face_track.prepare_face_track(base, OracleDetector(video))
    assert max(taken) <= face_track.DETECT_BATCH and sum(taken) == 2 * len(base)  # two passes, no more


# --- MuseTalk: the same track, DWPose on keyframes only ---------------------------------------------


class StubBase:
    def __init__(self, n):
        self.width, self.height, self.n = 640, 360, n

    def take(self, idx):
        return np.zeros((len(idx), self.height, self.width, 3), np.uint8) + np.asarray(idx, np.uint8)[:, None, None, None]


def test_musetalk_runs_dwpose_on_keyframes_and_carries_its_box_with_the_face():
    from node.engines.musetalk_prep import FROM_DWPOSE, NO_FACE, place_face_boxes

    # Given a track: frames 0-9 one segment (keyframes 0 and 9), the face moving right 10 px a
    # frame and growing 2 % a frame; frame 10 faceless
    n = 11
    boxes = np.zeros((n, 4))
    for i in range(10):
        cx, side = 200 + 10 * i, 100 * 1.02 ** i
        boxes[i] = (cx - side / 2, 150 - side / 2, cx + side / 2, 150 + side / 2)
    reason = np.zeros(n, np.uint8)
    reason[[0, 9, 10]] = (tracking.FIRST, tracking.SCHEDULED, tracking.CUT)
    has_face = np.arange(n) < 10
    faces = tracking.TrackedFaces(boxes, has_face, reason, np.where(has_face, 1, -1).astype(np.int32))
    calls = []

    def landmarks(frame):  # 68 points; the landmark box is the S3FD box's lower 80 %, shifted by the frame
        i = int(frame[0, 0, 0])
        calls.append(i)
        x1, y1, x2, y2 = boxes[i]
        lm = np.stack([np.linspace(x1, x2, 68), np.linspace(y1 + 0.2 * (y2 - y1), y2, 68)], axis=1)
        lm[29, 1] = (y1 + y2) / 2 + 10
        return lm.astype(np.int32)

    placed, source = place_face_boxes(StubBase(n), faces, landmarks)
    # Then DWPose ran on the two keyframes with a face only
    assert calls == [0, 9]
    # and every face frame's box comes from the landmarks, moved and scaled with the face
    assert source[:10].tolist() == [FROM_DWPOSE] * 10 and source[10] == NO_FACE
    from models.musetalk.face_box import landmark_box

    for i in (0, 9):  # on keyframes exactly the official landmark box
        assert tuple(placed[i]) == landmark_box(landmarks(StubBase(n).take([i])[0]))
    for i in range(1, 9):  # in between: the same place relative to the face box, within rounding
        expected = landmark_box(landmarks(StubBase(n).take([i])[0]))
        assert np.abs(np.array(placed[i]) - expected).max() <= 2, (i, placed[i], expected)


def test_musetalk_cache_is_keyed_on_the_prep_version(tmp_path, monkeypatch):
    from node.engines import musetalk_prep

    before = musetalk_prep.params_key({"detector": "x"})
    monkeypatch.setattr(musetalk_prep, "PREP_VERSION", musetalk_prep.PREP_VERSION + 1)
    assert musetalk_prep.params_key({"detector": "x"}) != before
