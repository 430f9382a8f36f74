"""Generated tokens -> streamed text: incremental UTF-8 decoding, healed bytes dropped, stop strings.

Text is decoded from token bytes (an incremental decoder holds back half characters). Stop strings are matched
on that text across token boundaries, and text that could still begin a stop string is held back from the
stream. Token healing removed some bytes from the end of the prompt; the first generated token(s) regenerate
them, so they are cut from the output here. Standard library only.
"""

from __future__ import annotations

import codecs
from collections.abc import Callable


def stop_holdback(text: str, stops: list[str]) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of some stop string."""
    best = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:k]):
                best = k
                break
    return best


def find_stop(text: str, stops: list[str]) -> int:
    """Index where the earliest stop string starts in `text`, or -1."""
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(hits) if hits else -1


class TextStream:
    """One sequence's output text, built token by token."""

    def __init__(self, healed: bytes = b"") -> None:
        self.healed = healed  # every byte token healing removed from the prompt
        self.strip = healed  # the healed bytes not yet regenerated (dropped from the text)
        self.text = ""
        self.emitted = 0  # characters of `text` already streamed
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, data: bytes) -> None:
        """Append one token's bytes."""
        if self.strip:
            n = min(len(self.strip), len(data))
            data, self.strip = data[n:], self.strip[n:]
        self.text += self._decoder.decode(data)

    def flush(self) -> None:
        """The sequence ended: a half character still held becomes U+FFFD."""
        self.text += self._decoder.decode(b"", final=True)

    def cut_at_stop(self, stops: list[str]) -> bool:
        """Cut the text where the earliest stop string starts; True when one was found."""
        cut = find_stop(self.text, stops) if stops else -1
        if cut >= 0:
            self.text = self.text[:cut]
        return cut >= 0

    def take_delta(self, stops: list[str], finished: bool) -> str:
        """The text not streamed yet, less what could still begin a stop string (all of it once finished)."""
        safe = len(self.text)
        if not finished and stops:
            safe -= stop_holdback(self.text, stops)
        delta = self.text[self.emitted : max(safe, self.emitted)]
        self.emitted = max(safe, self.emitted)
        return delta


def token_texts(ids: list[int], healed: bytes, token_bytes: Callable[[int], bytes]) -> list[str]:
    """The text of each token; the first token(s) lose the healed bytes, which the prompt already has."""
    out = []
    for t in ids:
        data = token_bytes(t)
        n = min(len(healed), len(data))
        data, healed = data[n:], healed[n:]
        out.append(data.decode("utf-8", errors="replace"))
    return out
