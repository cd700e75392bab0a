"""Single-writer i64 positions and counters shared by all broker processes (see layout.py).

Each field has exactly one owner process (layout.POSITION_OWNERS); only that process may call its
`set_<name>`. Any process may read. A read is one aligned 8-byte load: stale, never torn.
Reads and writes are a memoryview index each (about 25 ns); no allocation.
Thread-safety: fine for concurrent readers; one writer per field, as everywhere in shm.
"""
from __future__ import annotations

from shm.layout import LINE_SIZE, POSITION_LINES, POSITIONS, POSITIONS_OFFSET
from shm.segment import Segment

_WORDS_PER_LINE = LINE_SIZE // 8

_WRITE_POS = 0 * _WORDS_PER_LINE
_FLUSH_POS = 1 * _WORDS_PER_LINE
_DISPATCH_POS = 2 * _WORDS_PER_LINE
_CQ_FLUSH_POS = 3 * _WORDS_PER_LINE
_MIN_PHY_OFFSET = 4 * _WORDS_PER_LINE
_DISK_USED_PPM = 5 * _WORDS_PER_LINE
_PUT_MESSAGES_TOTAL = 6 * _WORDS_PER_LINE
_PUT_BYTES_TOTAL = 7 * _WORDS_PER_LINE
_WRITE_GROUPS_TOTAL = 8 * _WORDS_PER_LINE
_FLUSH_TOTAL = 9 * _WORDS_PER_LINE
_PULL_MESSAGES_TOTAL = 10 * _WORDS_PER_LINE
_WRITER_FLAGS = 11 * _WORDS_PER_LINE
_CLEANER_FLAGS = 12 * _WORDS_PER_LINE
_CLEAN_REQUESTED = 13 * _WORDS_PER_LINE
_WRITE_RETRY_SEQ = 14 * _WORDS_PER_LINE
_FILES_DELETED_SEQ = 15 * _WORDS_PER_LINE
_DISK_LIMITS = 16 * _WORDS_PER_LINE
_SEND_RT_HIST = 17 * _WORDS_PER_LINE  # the whole line: 8 counters (layout.py)
_SEND_RT_SUM_US = 18 * _WORDS_PER_LINE
_FLUSH_TIME_US_TOTAL = 19 * _WORDS_PER_LINE
_RATES = 20 * _WORDS_PER_LINE  # the whole line: 8 words (layout.py)


class Positions:
    """Typed access to the positions block. `p.write_pos` reads; `p.set_write_pos(v)` writes (owner only)."""

    def __init__(self, segment: Segment) -> None:
        self._words = segment.view(POSITIONS_OFFSET, POSITION_LINES * LINE_SIZE, "q")

    def get(self, name: str) -> int:
        """Read a position by name (for status output; the properties are faster)."""
        return self._words[POSITIONS.index(name) * _WORDS_PER_LINE]

    def set(self, name: str, value: int) -> None:
        """Write a position by name (owner only; the set_<name> methods are faster)."""
        self._words[POSITIONS.index(name) * _WORDS_PER_LINE] = value

    def as_dict(self) -> dict[str, int]:
        return {name: self.get(name) for name in POSITIONS}

    @property
    def write_pos(self) -> int:
        return self._words[_WRITE_POS]

    def set_write_pos(self, value: int) -> None:  # owner: writer
        self._words[_WRITE_POS] = value

    @property
    def flush_pos(self) -> int:
        return self._words[_FLUSH_POS]

    def set_flush_pos(self, value: int) -> None:  # owner: flusher
        self._words[_FLUSH_POS] = value

    @property
    def dispatch_pos(self) -> int:
        return self._words[_DISPATCH_POS]

    def set_dispatch_pos(self, value: int) -> None:  # owner: dispatcher
        self._words[_DISPATCH_POS] = value

    @property
    def cq_flush_pos(self) -> int:
        return self._words[_CQ_FLUSH_POS]

    def set_cq_flush_pos(self, value: int) -> None:  # owner: dispatcher
        self._words[_CQ_FLUSH_POS] = value

    @property
    def min_phy_offset(self) -> int:
        return self._words[_MIN_PHY_OFFSET]

    def set_min_phy_offset(self, value: int) -> None:  # owner: cleaner
        self._words[_MIN_PHY_OFFSET] = value

    @property
    def disk_used_ppm(self) -> int:
        return self._words[_DISK_USED_PPM]

    def set_disk_used_ppm(self, value: int) -> None:  # owner: cleaner
        self._words[_DISK_USED_PPM] = value

    @property
    def put_messages_total(self) -> int:
        return self._words[_PUT_MESSAGES_TOTAL]

    def set_put_messages_total(self, value: int) -> None:  # owner: writer
        self._words[_PUT_MESSAGES_TOTAL] = value

    @property
    def put_bytes_total(self) -> int:
        return self._words[_PUT_BYTES_TOTAL]

    def set_put_bytes_total(self, value: int) -> None:  # owner: writer
        self._words[_PUT_BYTES_TOTAL] = value

    @property
    def write_groups_total(self) -> int:
        return self._words[_WRITE_GROUPS_TOTAL]

    def set_write_groups_total(self, value: int) -> None:  # owner: writer
        self._words[_WRITE_GROUPS_TOTAL] = value

    @property
    def flush_total(self) -> int:
        return self._words[_FLUSH_TOTAL]

    def set_flush_total(self, value: int) -> None:  # owner: flusher
        self._words[_FLUSH_TOTAL] = value

    @property
    def pull_messages_total(self) -> int:
        return self._words[_PULL_MESSAGES_TOTAL]

    def set_pull_messages_total(self, value: int) -> None:  # owner: front
        self._words[_PULL_MESSAGES_TOTAL] = value

    @property
    def writer_flags(self) -> int:
        return self._words[_WRITER_FLAGS]

    def set_writer_flags(self, value: int) -> None:  # owner: writer
        self._words[_WRITER_FLAGS] = value

    @property
    def cleaner_flags(self) -> int:
        return self._words[_CLEANER_FLAGS]

    def set_cleaner_flags(self, value: int) -> None:  # owner: cleaner
        self._words[_CLEANER_FLAGS] = value

    @property
    def clean_requested(self) -> int:
        return self._words[_CLEAN_REQUESTED]

    def set_clean_requested(self, value: int) -> None:  # owner: front
        self._words[_CLEAN_REQUESTED] = value

    @property
    def write_retry_seq(self) -> int:
        return self._words[_WRITE_RETRY_SEQ]

    def set_write_retry_seq(self, value: int) -> None:  # owner: cleaner
        self._words[_WRITE_RETRY_SEQ] = value

    @property
    def files_deleted_seq(self) -> int:
        return self._words[_FILES_DELETED_SEQ]

    def set_files_deleted_seq(self, value: int) -> None:  # owner: cleaner
        self._words[_FILES_DELETED_SEQ] = value

    @property
    def disk_limits(self) -> int:
        return self._words[_DISK_LIMITS]

    def set_disk_limits(self, value: int) -> None:  # owner: cleaner
        self._words[_DISK_LIMITS] = value

    @property
    def send_rt_hist(self) -> int:
        """Word 0 of the histogram line only; use `send_rt_hist_words()` for all eight counters."""
        return self._words[_SEND_RT_HIST]

    def set_send_rt_hist(self, value: int) -> None:  # owner: front
        self._words[_SEND_RT_HIST] = value

    def send_rt_hist_words(self) -> memoryview:
        """The 8 i64 counters of the send RT histogram line (owner: front writes, anyone reads)."""
        return self._words[_SEND_RT_HIST:_SEND_RT_HIST + _WORDS_PER_LINE]

    @property
    def send_rt_sum_us(self) -> int:
        return self._words[_SEND_RT_SUM_US]

    def set_send_rt_sum_us(self, value: int) -> None:  # owner: front
        self._words[_SEND_RT_SUM_US] = value

    @property
    def flush_time_us_total(self) -> int:
        return self._words[_FLUSH_TIME_US_TOTAL]

    def set_flush_time_us_total(self, value: int) -> None:  # owner: flusher
        self._words[_FLUSH_TIME_US_TOTAL] = value

    @property
    def rates(self) -> int:
        """Word 0 of the rates line only; use `rates_words()` for all eight."""
        return self._words[_RATES]

    def set_rates(self, value: int) -> None:  # owner: metrics
        self._words[_RATES] = value

    def rates_words(self) -> memoryview:
        """The 8 i64 words of the rates line (owner: metrics writes, anyone reads)."""
        return self._words[_RATES:_RATES + _WORDS_PER_LINE]
