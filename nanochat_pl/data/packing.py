"""BOS-aligned best-fit packing: documents in, rows of exactly `row_len` tokens out (nanochat dataloader.py).

Before every pick, while the buffer holds fewer than 1000 documents, the next 128 of the stream join it (one
tokenizer batch); a row is filled with the LONGEST buffered document that fits in the space left, again and again;
when none fits, the SHORTEST is cropped to fill the row exactly. Every row starts at a document's BOS and no token
is padding. Ties go to the document that arrived first, as in nanochat's scan. Refilling in chunks matters: topped
up one at a time, the buffer fills up with documents longer than a row. nanochat's chunk ends early at the end of a
row group; the two agree when row groups hold a multiple of 128 documents, as FineWeb-Edu's and the offline
corpus's do. Documents are kept sorted by (length, arrival) and found by bisection.
"""

from __future__ import annotations

import itertools
from bisect import bisect_left, bisect_right, insort
from collections.abc import Hashable, Iterable, Iterator, Sequence

import numpy as np

# a buffered document's code, length << _ARRIVAL_BITS | arrival, sorts by length then arrival (2**40: plenty)
_ARRIVAL_BITS = 40
_ARRIVAL_MASK = (1 << _ARRIVAL_BITS) - 1

Document = tuple[Hashable, Sequence[int]]


class BestFitPacker(Iterator[np.ndarray]):
    """Rows (int64 arrays of `row_len` tokens) packed by best fit from `documents`, `(key, tokens)` pairs, until they
    run out. With a `pad_token`, a row that no buffered document fits is padded instead of cropping one. To resume,
    give a new packer the documents of `buffered_keys()` as `buffered` and the rest of the stream as `documents`: it
    produces the rows the first one would have, since refills take whole chunks."""

    def __init__(
        self, documents: Iterable[Document], row_len, buffer_docs=1000, refill_docs=128, buffered=(), pad_token=None
    ):
        assert row_len > 0 and buffer_docs > 0 and refill_docs > 0
        self.row_len, self.buffer_docs, self.refill_docs, self.pad_token = row_len, buffer_docs, refill_docs, pad_token
        self._documents = iter(documents)
        self._exhausted = False
        self._sorted_codes: list[int] = []  # length << _ARRIVAL_BITS | arrival, ascending
        # arrival number -> (key, tokens); a dict keeps insertion order, so this is the arrival order
        self._buffer: dict[int, tuple[Hashable, np.ndarray]] = {}
        self._arrivals = itertools.count()
        self.tokens_consumed = 0  # tokens of every document taken out of the buffer, cropped or not
        self.tokens_cropped = 0  # of those, the tails discarded by crops
        self.last_fetched: Hashable | None = None  # the key of the last document taken from `documents`
        for key, tokens in buffered:
            self._add(key, tokens)

    def buffered_keys(self) -> list[Hashable]:  # of the documents waiting in the buffer, in arrival order
        return [key for key, _ in self._buffer.values()]

    def __next__(self) -> np.ndarray:
        row = np.empty(self.row_len, dtype=np.int64)
        pos = 0
        while pos < self.row_len:
            self._refill()
            if not self._sorted_codes:
                raise StopIteration
            space = self.row_len - pos
            if fits := bisect_right(self._sorted_codes, (space << _ARRIVAL_BITS) | _ARRIVAL_MASK):
                # the longest length that fits, and the first-arrived document of that length
                length = self._sorted_codes[fits - 1] >> _ARRIVAL_BITS
                tokens = self._take(bisect_left(self._sorted_codes, length << _ARRIVAL_BITS))
                row[pos : pos + length] = tokens
                pos += length
            elif self.pad_token is not None and pos > 0:
                # nothing fits: pad the rest of the row, keeping every token (SFT, chat_sft.py@92d63d4)
                row[pos:] = self.pad_token
                pos = self.row_len
            else:
                # nothing fits: crop the shortest document to fill the row exactly, losing the least
                tokens = self._take(0)
                row[pos:] = tokens[:space]
                self.tokens_cropped += len(tokens) - space
                pos = self.row_len
        return row

    def _take(self, index: int) -> np.ndarray:
        code = self._sorted_codes.pop(index)
        _, tokens = self._buffer.pop(code & _ARRIVAL_MASK)
        self.tokens_consumed += len(tokens)
        return tokens

    def _refill(self) -> None:
        while len(self._buffer) < self.buffer_docs and not self._exhausted:
            chunk = list(itertools.islice(self._documents, self.refill_docs))
            self._exhausted = len(chunk) < self.refill_docs
            for key, tokens in chunk:
                self._add(key, tokens)
                self.last_fetched = key

    def _add(self, key: Hashable, tokens: Sequence[int]) -> None:
        tokens = np.asarray(tokens, dtype=np.int32)  # half the memory of int64; ids are < 2**31
        arrival = next(self._arrivals)
        self._buffer[arrival] = (key, tokens)
        insort(self._sorted_codes, (len(tokens) << _ARRIVAL_BITS) | arrival)
