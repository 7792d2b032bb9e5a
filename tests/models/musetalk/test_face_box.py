"""models/musetalk/face_box.py: the official landmark box, S3FD fallbacks (PIPELINES.md §4.1).

Landmarks are built by hand; every expected box is worked out in the comments from rule 4:
y1 = max(0, 2 * lm[29].y - max(lm.y)), x1 = min(lm.x), x2 = max(lm.x), y2 = max(lm.y).
"""

from __future__ import annotations

import numpy as np
import pytest

from models.musetalk.face_box import face_box, face_landmarks, landmark_box, landmark_box_valid

S3FD_BOX = (90, 120, 210, 290)


def face68(x_range=(100, 200), y_range=(150, 300), nose_y=220):
    """68 int32 landmarks: x and y spread over the ranges, then point 29 moved to y = nose_y."""
    lm = np.zeros((68, 2), np.int32)
    lm[:, 0] = np.linspace(*x_range, 68).astype(np.int32)
    lm[:, 1] = np.linspace(*y_range, 68).astype(np.int32)[::-1]
    lm[29, 1] = nose_y
    return lm


def test_face_landmarks_slice_and_truncate():
    kp = np.full((133, 2), 5000.0)
    kp[23:91, 0] = np.arange(68) + 0.99  # truncation: 0.99 -> 0, 1.99 -> 1 ...
    kp[23:91, 1] = -np.arange(68) - 0.7  # toward zero: -0.7 -> 0, -1.7 -> -1 ...
    lm = face_landmarks(kp)
    assert lm.dtype == np.int32 and lm.shape == (68, 2) and lm.flags.c_contiguous
    np.testing.assert_array_equal(lm[:, 0], np.arange(68))
    np.testing.assert_array_equal(lm[:, 1], -np.arange(68))
    with pytest.raises(ValueError):
        face_landmarks(np.zeros((68, 2)))


def test_landmark_box_halves_the_face_at_point_29():
    # max y 300, nose 220: half distance 80 -> y1 = 140
    box = face_box(face68(), S3FD_BOX)
    assert box == (100, 140, 200, 300)
    assert all(type(v) is int for v in box)


def test_top_clamped_at_zero():
    # nose 50, max y 300 (the spread starts at 150 but point 29 is moved): 2*50 - 300 < 0 -> 0
    assert face_box(face68(nose_y=50), S3FD_BOX) == (100, 0, 200, 300)


def test_no_s3fd_face_means_no_box():
    assert face_box(face68(), None) is None


def test_negative_x1_falls_back_to_s3fd():
    lm = face68()
    lm[0, 0] = -1
    assert landmark_box(lm) == (-1, 140, 200, 300)
    assert face_box(lm, S3FD_BOX) == S3FD_BOX
    lm[0, 0] = 0  # x1 = 0 is kept
    assert face_box(lm, S3FD_BOX) == (0, 140, 200, 300)


def test_zero_width_falls_back_to_s3fd():
    lm = face68(x_range=(120, 120))
    assert face_box(lm, S3FD_BOX) == S3FD_BOX


def test_zero_height_falls_back_to_s3fd():
    # point 29 is the lowest point: half distance 0, y1 = y2 = 300
    lm = face68(y_range=(150, 290), nose_y=300)
    assert landmark_box(lm) == (100, 300, 200, 300)
    assert not landmark_box_valid(landmark_box(lm))
    assert face_box(lm, S3FD_BOX) == S3FD_BOX


def test_all_landmarks_at_top_edge_falls_back():
    lm = np.zeros((68, 2), np.int32)
    lm[:, 0] = np.arange(68) + 10
    assert landmark_box(lm) == (10, 0, 77, 0)
    assert face_box(lm, S3FD_BOX) == S3FD_BOX


def test_fallback_box_is_returned_as_python_ints():
    lm = face68()
    lm[3, 0] = -5
    box = face_box(lm, (np.int64(3), np.int32(4), 50, 60))
    assert box == (3, 4, 50, 60) and all(type(v) is int for v in box)


def test_box_may_pass_the_right_and_bottom_edges():
    # nothing clamps x2 or y2 here; crop_face clamps y2 + margin to the frame height
    assert face_box(face68(x_range=(1800, 1990), y_range=(900, 1100), nose_y=1000), S3FD_BOX) \
        == (1800, 900, 1990, 1100)


def test_bbox_shift_moves_the_half_face_line():
    # v1 only (v1.5 forces 0): nose 220 + 5 = 225, half distance 75 -> y1 = 150
    assert face_box(face68(), S3FD_BOX, bbox_shift=5) == (100, 150, 200, 300)
    # shifted up: 220 - 30 = 190, half distance 110 -> y1 = 80
    assert face_box(face68(), S3FD_BOX, bbox_shift=-30) == (100, 80, 200, 300)


def test_bbox_shift_is_written_into_the_landmarks():
    # 220 + 100 = 320 becomes the lowest point itself: y2 = 320, half distance 0 -> y1 = 320,
    # zero height -> S3FD. (Shifting a separate half-face value would give (100, 340, 200, 300).)
    lm = face68()
    assert landmark_box(lm, bbox_shift=100) == (100, 320, 200, 320)
    assert face_box(lm, S3FD_BOX, bbox_shift=100) == S3FD_BOX
    np.testing.assert_array_equal(lm, face68())  # the caller's landmarks are untouched


def test_unscored_face_point_pushes_x1_negative():
    # DWPose puts a keypoint whose SimCC maximum is <= 0 at input pixel (-0.5, -0.5). On a
    # 1920 x 1080 frame (centre 960, 540; scale 2400 x 3200) that is frame x = -0.5 / 288 * 2400
    # + 960 - 1200 = -244.17 and y = -0.5 / 384 * 3200 + 540 - 1600 = -1064.17, truncated to
    # (-244, -1064); the input centre (144, 192) is the frame centre (960, 540).
    from models.face.dwpose import to_frame, whole_frame_center_scale

    input_pts = np.tile(np.float32([[144, 192]]), (133, 1))
    input_pts[23 + 5] = -0.5
    lm = face_landmarks(to_frame(input_pts, *whole_frame_center_scale(1080, 1920)))
    assert tuple(lm[5]) == (-244, -1064) and tuple(lm[29]) == (960, 540)
    assert landmark_box(lm) == (-244, 540, 960, 540)
    assert face_box(lm, S3FD_BOX) == S3FD_BOX
