"""Write uint8 frames to a real video file with PyAV (synthetic set, tests, compression)."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np

from psbench.files.atomic import atomic_path


def write_video(path: str | Path, frames: np.ndarray, fps: int = 8, codec: str = "libx264", crf: int = 18) -> None:
    """Encode frames (T, H, W, 3) uint8 RGB into ``path`` (H and W must be even for yuv420p).

    Every frame is written with an increasing pts so decoders see exactly T frames.
    """
    frames = np.ascontiguousarray(frames, dtype=np.uint8)
    t, h, w, c = frames.shape
    if c != 3 or h % 2 or w % 2:
        raise ValueError(f"frames must be (T, even H, even W, 3); got {frames.shape}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, av.open(str(tmp), mode="w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": str(crf), "preset": "veryfast", "tune": "zerolatency"}
        for i in range(t):
            frame = av.VideoFrame.from_ndarray(frames[i], format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
