"""Read-only views of the store, shared by the JSON API and the CLI (STYLE §5).

Each view is a function of a cursor of the store (tally.store.contract.Cursor)
and plain arguments that returns a JSON-ready ``dict``; the API serialises
it, the CLI prints it as a table. Their SQL is DuckDB's where docs/store.md
says so ("What a second engine provides").
"""
