"""Token-level streaming: when to cut a segment's tokens into chunks, and how to join them.

A segment streams as overlapping token windows: every ``min_chunk_length`` new tokens the
acoustic stage decodes a window that starts ``context`` tokens before the new ones (the text
encoder and flow see some history), and consecutive chunks share ``overlap_length`` tokens of
audio, cross-faded with a sine window. Upstream (``TTS.py`` streaming_mode, 2025-11) cuts at
silence-like tokens and cross-fades latent frames inside a dedicated SoVITS decode; this runtime
cuts at fixed token counts and cross-fades audio, using the one exported decoder graph.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class TokenChunker:
    """Decides the windows of one segment as its tokens arrive."""

    min_chunk_length: int = 16
    overlap_length: int = 2
    context: int = 16
    cut: int = 0
    """Tokens already sent for decoding (end of the last window)."""

    def next_window(self, n_tokens: int, final: bool) -> tuple[int, int] | None:
        """``(start, end)`` of the window to decode now (and mark it sent), or None: too few
        new tokens yet, or a final call on a segment without tokens."""
        if n_tokens == 0 or (not final and n_tokens - self.cut < self.min_chunk_length):
            return None
        window = (self.window_start(), n_tokens)
        self.cut = n_tokens
        return window

    def window_start(self) -> int:
        return max(0, self.cut - self.overlap_length - self.context)


@dataclass
class TokenStitcher:
    """Turns decoded windows into gap-free audio: holds back each window's last
    ``overlap_length`` tokens and cross-fades them into the next window."""

    samples_per_token: float
    overlap_length: int = 2
    emitted: int = 0
    """Tokens whose audio is out (the held-back tail not counted)."""
    tail: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))

    def add(self, wav: np.ndarray, start: int, end: int, final: bool) -> np.ndarray:
        """Audio to emit for the window ``[start, end)`` decoded as ``wav``."""
        skip = round((self.emitted - start) * self.samples_per_token)
        piece = np.array(wav[max(0, skip) :], dtype=np.float32)
        fade = min(len(self.tail), len(piece))
        if fade:
            ramp = np.sin(0.5 * np.pi * (np.arange(fade, dtype=np.float32) + 0.5) / fade) ** 2
            piece[:fade] = self.tail[:fade] * (1 - ramp) + piece[:fade] * ramp
        if final:
            self.tail = np.zeros(0, np.float32)
            self.emitted = end
            return piece
        hold = min(len(piece), round(self.overlap_length * self.samples_per_token))
        self.tail = piece[len(piece) - hold :]
        self.emitted = max(self.emitted, end - self.overlap_length)
        return piece[: len(piece) - hold]
