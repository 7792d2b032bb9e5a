"""Synthetic face videos whose true face box is known on every frame, and an oracle detector.

A real face photo (tests/data/astronaut_face.jpg, public domain) is placed on a textured scene by a
scale-and-shift per frame: pans, zooms and hand-held jitter, its mouth stretched open and shut as if
talking, hard cuts to another scene, faceless spans. The true box of every frame follows from the
transform (no rotation, so it stays exactly axis-aligned), in the edge convention detectors use:
pixel i spans [i, i + 1).

The oracle only sees pixels, as a detector does: each frame carries its index as a 16-bit barcode
of black and white blocks in the bottom-left corner (blocks of >= 8 px survive H.264 and a 4x
downscale, and sit far from the face). `OracleDetector` reads it and answers the true box scaled to
the frames it was given, or None during a faceless span. Code under test never sees the truth.

Used by tests/node/test_face_track.py and bench/cold_avatar.py.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

FACE_PHOTO = Path(__file__).resolve().parent / "data" / "astronaut_face.jpg"
#: The face in the photo (edge coordinates): eyebrows to chin, cheek to cheek, as S3FD draws it.
FACE_BOX_IN_PHOTO = (64.0, 60.0, 166.0, 170.0)
#: Lips to chin, stretched down by up to MOUTH_OPEN_MAX to make the mouth move as in speech.
MOUTH_IN_PHOTO = (88, 126, 144, 166)
MOUTH_OPEN_MAX = 0.3
INDEX_BITS = 16
#: Scene brightness per scene id: distinct enough that a cut between scenes changes the histogram.
SCENE_LEVELS = (95, 165, 55, 130)


@dataclass(frozen=True)
class Shot:
    """`frames` frames of scene `scene`. `path`: None for a faceless shot, else waypoints
    (t, cx, cy, side): at fraction t of the shot the face box is centred at (cx * width,
    cy * height) and is side * height wide, eased in between. `jitter`: hand-held shake, px at
    720p (uniform per frame). `talking`: the mouth opens and shuts."""

    frames: int
    scene: int = 0
    path: tuple | None = ((0.0, 0.5, 0.45, 0.3), (1.0, 0.5, 0.45, 0.3))
    jitter: float = 0.0
    talking: bool = True


class SyntheticFaceVideo:
    def __init__(self, shots: list[Shot], width: int = 1280, height: int = 720, fps: int = 25, seed: int = 0):
        self.shots, self.width, self.height, self.fps = shots, width, height, fps
        self.starts = np.cumsum([0] + [s.frames for s in shots])
        self.frame_count = int(self.starts[-1])
        self.block = max(8, round(width / 80))
        if (INDEX_BITS + 2) * self.block > width / 3:
            raise ValueError(f"{width} px is too narrow for the frame-index barcode")
        rng = np.random.default_rng(seed)
        self._jitter = rng.uniform(-1, 1, (self.frame_count, 2))
        photo = cv2.imread(str(FACE_PHOTO))
        if photo is None:
            raise FileNotFoundError(FACE_PHOTO)
        self._photos = [_open_mouth(photo, k / 3 * MOUTH_OPEN_MAX) for k in range(4)]
        self._scenes: dict[int, np.ndarray] = {}

    # --- the truth ---------------------------------------------------------------------------

    def shot_of(self, i: int) -> tuple[Shot, int]:
        k = int(np.searchsorted(self.starts, i, side="right")) - 1
        return self.shots[k], i - int(self.starts[k])

    @property
    def cuts(self) -> list[int]:
        """First frames of every shot but the first."""
        return [int(s) for s in self.starts[1:-1]]

    def placement(self, i: int) -> tuple[float, float, float] | None:
        """(scale, shift_x, shift_y) mapping photo pixel centres to frame pixel centres, or None."""
        shot, j = self.shot_of(i)
        if shot.path is None:
            return None
        t = j / max(1, shot.frames - 1)
        cx, cy, side = _along(shot.path, t)
        jx, jy = self._jitter[i] * shot.jitter * self.width / 1280
        fx1, fy1, fx2, fy2 = FACE_BOX_IN_PHOTO
        scale = side * self.height / (fx2 - fx1)
        # the face box centre (edge coordinates) lands on (cx, cy): e' = s (e - 0.5) + t + 0.5
        shift_x = cx * self.width + jx - 0.5 - scale * ((fx1 + fx2) / 2 - 0.5)
        shift_y = cy * self.height + jy - 0.5 - scale * ((fy1 + fy2) / 2 - 0.5)
        return scale, shift_x, shift_y

    def true_box(self, i: int) -> np.ndarray | None:
        placed = self.placement(i)
        if placed is None:
            return None
        s, tx, ty = placed
        x1, y1, x2, y2 = FACE_BOX_IN_PHOTO
        return np.array([s * (x1 - 0.5) + tx + 0.5, s * (y1 - 0.5) + ty + 0.5,
                         s * (x2 - 0.5) + tx + 0.5, s * (y2 - 0.5) + ty + 0.5])

    def has_face(self) -> np.ndarray:
        return np.array([self.shot_of(i)[0].path is not None for i in range(self.frame_count)])

    # --- the pixels --------------------------------------------------------------------------

    def frame(self, i: int) -> np.ndarray:
        shot, j = self.shot_of(i)
        out = self._scene(shot.scene).copy()
        placed = self.placement(i)
        if placed is not None:
            s, tx, ty = placed
            photo = self._photos[_mouth_state(j) if shot.talking else 0]
            ph, pw = photo.shape[:2]
            # warp into the patch's bounding rectangle only: a whole-frame warp costs 10x more
            x0, y0 = max(0, int(tx - 1)), max(0, int(ty - 1))
            x1, y1 = min(self.width, int(tx + s * pw + 2)), min(self.height, int(ty + s * ph + 2))
            roi = np.ascontiguousarray(out[y0:y1, x0:x1])
            matrix = np.array([[s, 0, tx - x0], [0, s, ty - y0]])
            cv2.warpAffine(photo, matrix, (x1 - x0, y1 - y0), dst=roi, flags=cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_TRANSPARENT)
            out[y0:y1, x0:x1] = roi
        self._draw_index(out, i)
        return out

    def frames(self, start: int = 0, stop: int | None = None):
        for i in range(start, self.frame_count if stop is None else stop):
            yield self.frame(i)

    def write_mp4(self, path: Path, crf: int = 18) -> Path:
        """The video as H.264 (yuv420p), frames streamed to ffmpeg one at a time."""
        from node.media import ffmpeg_binary

        cmd = [ffmpeg_binary(), "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "bgr24",
               "-s", f"{self.width}x{self.height}", "-r", str(self.fps), "-i", "pipe:0",
               "-c:v", "libx264", "-preset", "veryfast", "-crf", str(crf), "-pix_fmt", "yuv420p", str(path)]
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE)
        try:
            for frame in self.frames():
                proc.stdin.write(frame.tobytes())
        finally:
            proc.stdin.close()
        if proc.wait() != 0:
            raise RuntimeError(f"ffmpeg failed writing {path}")
        return path

    def _scene(self, scene: int) -> np.ndarray:
        """A textured backdrop: smooth colour blotches over fine grain, one brightness per scene."""
        if scene not in self._scenes:
            rng = np.random.default_rng(1000 + scene)
            level = SCENE_LEVELS[scene % len(SCENE_LEVELS)]
            coarse = rng.uniform(-40, 40, (6, 10, 3)).astype(np.float32)
            fine = rng.uniform(-12, 12, (self.height // 8, self.width // 8, 1)).astype(np.float32)
            img = (level + cv2.resize(coarse, (self.width, self.height), interpolation=cv2.INTER_CUBIC)
                   + cv2.resize(fine, (self.width, self.height), interpolation=cv2.INTER_LINEAR)[..., None])
            self._scenes[scene] = np.clip(img, 0, 255).astype(np.uint8)
        return self._scenes[scene]

    def _draw_index(self, frame: np.ndarray, i: int) -> None:
        b, y = self.block, self.height - 2 * self.block
        frame[y - b // 2:y + b + b // 2, b // 2:(INDEX_BITS + 1) * b + b // 2] = 128  # a quiet border
        for k in range(INDEX_BITS):
            frame[y:y + b, (k + 1) * b:(k + 2) * b] = 255 if (i >> k) & 1 else 0


def read_frame_index(frame: np.ndarray, width: int, height: int) -> int:
    """The index a frame of a `width` x `height` synthetic video carries, at any scale."""
    sx, sy = frame.shape[1] / width, frame.shape[0] / height
    b = max(8, round(width / 80))
    yc = int((height - 1.5 * b) * sy)
    index = 0
    for k in range(INDEX_BITS):
        xc = int(((k + 1.5) * b) * sx)
        if frame[yc - 1:yc + 2, xc - 1:xc + 2].mean() > 128:  # the 3 x 3 centre of the bit's block
            index |= 1 << k
    return index


class OracleDetector:
    """A FaceDetector that knows the truth of `video`: it reads each frame's index from its pixels
    and answers the true box in the given frames' pixels (None when faceless). Counts its calls
    and the frames it was shown."""

    def __init__(self, video: SyntheticFaceVideo):
        self.video, self.calls, self.frames_seen = video, 0, []

    def __call__(self, frames: np.ndarray) -> list:
        self.calls += 1
        out = []
        sx, sy = frames.shape[2] / self.video.width, frames.shape[1] / self.video.height
        for frame in frames:
            i = read_frame_index(frame, self.video.width, self.video.height)
            if not 0 <= i < self.video.frame_count:
                raise ValueError(f"unreadable frame index {i}")
            self.frames_seen.append(i)
            box = self.video.true_box(i)
            out.append(None if box is None else [box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy])
        return out


# --- clips -------------------------------------------------------------------------------------


def talking_head(seconds: float = 10.0, width: int = 1280, height: int = 720, fps: int = 25) -> SyntheticFaceVideo:
    """One shot, a talking head with slow motion: a pan, a zoom in, a drift back, light jitter."""
    path = ((0.0, 0.46, 0.45, 0.30), (0.35, 0.56, 0.44, 0.30), (0.7, 0.55, 0.47, 0.36), (1.0, 0.50, 0.45, 0.33))
    return SyntheticFaceVideo([Shot(round(seconds * fps), 0, path, jitter=1.0)], width, height, fps)


def edited(seconds: float = 10.0, width: int = 1280, height: int = 720, fps: int = 25) -> SyntheticFaceVideo:
    """Four shots with hard cuts: a panning talking head; another scene, the face elsewhere and
    zooming out; a faceless scene; the first scene again, the face re-appearing with strong jitter."""
    n = round(seconds * fps)
    lengths = [round(n * 0.4), round(n * 0.24), round(n * 0.12)]
    lengths.append(n - sum(lengths))
    return SyntheticFaceVideo([
        Shot(lengths[0], 0, ((0.0, 0.40, 0.45, 0.30), (1.0, 0.58, 0.42, 0.32)), jitter=1.0),
        Shot(lengths[1], 1, ((0.0, 0.30, 0.50, 0.42), (1.0, 0.36, 0.48, 0.30)), jitter=0.5),
        Shot(lengths[2], 2, None),
        Shot(lengths[3], 0, ((0.0, 0.66, 0.52, 0.26), (1.0, 0.62, 0.50, 0.28)), jitter=2.5),
    ], width, height, fps)


def _along(path: tuple, t: float) -> tuple[float, float, float]:
    """Waypoints interpolated at t, eased (smoothstep) so motion starts and stops gently."""
    for (t0, *a), (t1, *b) in zip(path, path[1:]):
        if t <= t1 or (t1, *b) == path[-1]:
            u = min(1.0, max(0.0, (t - t0) / (t1 - t0)))
            u = u * u * (3 - 2 * u)
            return tuple(float(p + (q - p) * u) for p, q in zip(a, b))
    return tuple(path[0][1:])


def _mouth_state(j: int) -> int:
    """Open and shut about three times a second at 25 fps: 0 1 2 3 2 1 0 ..."""
    return (0, 1, 2, 3, 2, 1, 0, 0)[j % 8]


def _open_mouth(photo: np.ndarray, amount: float) -> np.ndarray:
    """The photo with its lips-to-chin region stretched down by `amount` (cut at the region's
    bottom): a non-rigid change inside the face box, as speech makes."""
    if amount <= 0:
        return photo
    x1, y1, x2, y2 = MOUTH_IN_PHOTO
    out = photo.copy()
    region = photo[y1:y2, x1:x2]
    tall = cv2.resize(region, (x2 - x1, round((y2 - y1) * (1 + amount))), interpolation=cv2.INTER_LINEAR)
    out[y1:y2, x1:x2] = tall[:y2 - y1]
    return out


# --- small engine-test videos ------------------------------------------------------------------


def make_face_video(path: Path, box: tuple[int, int, int, int], seconds: float, faceless=(), width: int = 160,
                    height: int = 120) -> Path:
    """tests.conftest.make_video's moving test pattern with the photo's face filling `box` (still,
    so a tracked box stays exactly `box`), blacked out on the frames in `faceless`: a detector
    that judges pixels (`face_shown`) finds no face there, and a tracker sees it vanish."""
    from tests.conftest import require_tool

    x1, y1, x2, y2 = box
    fx1, fy1, fx2, fy2 = (int(v) for v in FACE_BOX_IN_PHOTO)
    graph = (f"[1:v]crop={fx2 - fx1}:{fy2 - fy1}:{fx1}:{fy1},scale={x2 - x1}:{y2 - y1}[face];"
             f"[0:v][face]overlay={x1}:{y1}:shortest=1")
    if faceless:
        hidden = "+".join(f"eq(n,{i})" for i in sorted(faceless))
        graph += f",drawbox=x={x1}:y={y1}:w={x2 - x1}:h={y2 - y1}:color=black:t=fill:enable='{hidden}'"
    cmd = [require_tool("ffmpeg"), "-v", "error", "-y", "-f", "lavfi", "-i", f"testsrc2=size={width}x{height}:rate=25",
           "-loop", "1", "-i", str(FACE_PHOTO), "-filter_complex", graph, "-t", str(seconds),
           "-pix_fmt", "yuv420p", "-c:v", "libx264", "-preset", "ultrafast", str(path)]
    subprocess.run(cmd, check=True)
    return path


def face_shown(frame: np.ndarray, box) -> bool:
    """Whether `box` of `frame` shows something rather than a flat blacked-out area."""
    x1, y1, x2, y2 = (int(v) for v in box)
    return float(frame[max(0, y1):y2, max(0, x1):x2].std()) > 8.0
