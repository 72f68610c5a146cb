"""Read-only views of the store, shared by the JSON API and the CLI (STYLE §5).

Each view is a function of a DuckDB cursor and plain arguments that returns a
JSON-ready ``dict``; the API serialises it, the CLI prints it as a table.
"""
