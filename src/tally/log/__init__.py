"""The durable log (DESIGN §2): append-only segments, one stream per collector.

``record`` owns the frame format, ``writer`` appends with group commit and
recovers torn tails, ``reader`` iterates records from a position.
"""

from tally.log.reader import Entry, LogReader
from tally.log.record import Record
from tally.log.writer import SegmentWriter

__all__ = ["Entry", "LogReader", "Record", "SegmentWriter"]
