"""Backups of a data directory, and restoring them (``tally backup``, ``tally restore``).

A backup is a directory::

    manifest.json       what is here: format, versions, streams, sizes, SHA-256s
    log/<stream>/       each stream's segments up to its durable end, and DURABLE
    store.duckdb        a snapshot of the store at known log positions
    catalog.sqlite      products, API keys and operator-token hashes

It is consistent while ``tally serve`` runs. The store snapshot comes first,
made by DuckDB inside one transaction together with the positions it has
applied (:mod:`~tally.backup.snapshot`); each stream's durable end is read
after it, so the copied log holds every record the snapshot has applied, and
more. A restored server starts from the snapshot and applies the rest of the
copied log, as a server does after a restart (DESIGN §3: positions are
committed with the batch that reached them, so nothing is lost or applied
twice). The catalog is copied after the durable ends are read, so that it
knows every API key the copied records were sent with.

Both directions write into ``TARGET.partial`` and rename it to ``TARGET`` only
when everything in it is synced, the manifest last (:mod:`~tally.backup.partial`):
a backup or a data directory killed half-way exists only as a ``.partial``,
which is never taken for a whole one, and which the next run removes.

``snapshot`` copies the store (the core's API and the CLI call it),
``manifest`` owns the backup's format, ``partial`` writes a directory that
becomes whole with one rename, ``take`` copies the log and the catalog, and
``restore`` makes a new data directory of a backup.
"""
