-- Tidewater bookkeeping tables in a SQLite target. Idempotent: run at every start.
-- Times are ISO 8601 text in UTC (`YYYY-MM-DDTHH:MM:SS.ffffffZ`), booleans 0/1.

-- One row per pipeline: the source position of the last applied source transaction,
-- written in the same target transaction as the data it covers.
CREATE TABLE IF NOT EXISTS tidewater_checkpoints (
    pipeline          TEXT    NOT NULL PRIMARY KEY,
    source_position   TEXT    NOT NULL,
    snapshot_complete INTEGER NOT NULL DEFAULT 0,
    updated_at        TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

-- Events the target rejected (constraint, type, value out of range), kept for replay.
-- payload is the row as JSON text (use json_extract(payload, '$.column')).
CREATE TABLE IF NOT EXISTS tidewater_dead_letters (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    pipeline        TEXT    NOT NULL,
    source_position TEXT    NOT NULL,
    source_table    TEXT    NOT NULL,
    target_table    TEXT    NOT NULL,
    op              TEXT    NOT NULL,
    payload         TEXT    NOT NULL,
    error           TEXT    NOT NULL,
    failed_at       TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    replayed_at     TEXT
);

CREATE INDEX IF NOT EXISTS tidewater_dead_letters_pipeline_idx
    ON tidewater_dead_letters (pipeline, id);

-- Source tables whose existing rows each pipeline has copied (initial snapshot or a
-- later backfill of a table added to the configuration).
CREATE TABLE IF NOT EXISTS tidewater_snapshot_tables (
    pipeline     TEXT NOT NULL,
    source_table TEXT NOT NULL,
    copied_at    TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (pipeline, source_table)
);
