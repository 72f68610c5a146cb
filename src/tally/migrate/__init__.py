"""Migration in and out (SPEC §10): imports that go through the log, and exports.

An import reads a source (a KISSmetrics export folder, a CSV file, JSON lines)
as :class:`~tally.migrate.records.Row` values, encodes each as a log record of
an import stream of its own (``log/i-<name>``), and keeps a checkpoint of its
place in the source beside the stream, written only after the records before
it are durable (:mod:`tally.migrate.importer`). The processor applies imported
records like tracked ones: de-duplication (SPEC §4) absorbs what a resumed or
repeated import writes again.
"""
