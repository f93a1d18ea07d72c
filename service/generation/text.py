"""Streaming text: token ids in, text pieces out, whose concatenation is the decoded text."""

from __future__ import annotations

from collections.abc import Callable

_REPLACEMENT = "\ufffd"  # what decoding shows for an incomplete UTF-8 sequence


class TextPieces:
    """Turns a growing list of token ids into text pieces whose concatenation is the text.

    A byte-level token may end inside a UTF-8 character: decoding then shows U+FFFD, so the
    piece is held back until the character is complete. Decoding the whole sequence each time
    (not token by token) keeps word-start spaces and merged bytes right.
    """

    def __init__(self, decode: Callable[[list[int]], str]) -> None:
        self._decode = decode
        self.ids: list[int] = []
        self.sent = ""

    def add(self, token_id: int) -> str:
        """The new text ``token_id`` completes ("" while a character is still incomplete)."""
        self.ids.append(token_id)
        text = self._decode(self.ids)
        if text.endswith(_REPLACEMENT) or not text.startswith(self.sent):
            return ""
        piece, self.sent = text[len(self.sent) :], text
        return piece

    def flush(self) -> str:
        """What is still held back, at the end of the sequence."""
        text = self._decode(self.ids)
        if not text.startswith(self.sent):
            return ""
        piece, self.sent = text[len(self.sent) :], text
        return piece
