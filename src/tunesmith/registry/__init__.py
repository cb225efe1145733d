"""Model versions with their lineage, in an embedded SQLite database (WAL)."""
