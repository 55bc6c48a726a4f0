-- Tidewater bookkeeping tables in a MySQL/MariaDB target, in the database named by the
-- target URL. Idempotent: run at every start, under GET_LOCK('tidewater_migrations').
-- Binary collation: pipeline and table names compare exactly.

-- One row per pipeline: the source position of the last applied source transaction,
-- written in the same target transaction as the data it covers.
CREATE TABLE IF NOT EXISTS tidewater_checkpoints (
    pipeline          VARCHAR(191) NOT NULL,
    source_position   TEXT         NOT NULL,
    snapshot_complete BOOLEAN      NOT NULL DEFAULT FALSE,
    updated_at        DATETIME(6)  NOT NULL,
    PRIMARY KEY (pipeline)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- Events the target rejected (constraint, type, value out of range), kept for replay.
-- Times are UTC.
CREATE TABLE IF NOT EXISTS tidewater_dead_letters (
    id              BIGINT       NOT NULL AUTO_INCREMENT,
    pipeline        VARCHAR(191) NOT NULL,
    source_position TEXT         NOT NULL,
    source_table    TEXT         NOT NULL,
    target_table    TEXT         NOT NULL,
    op              VARCHAR(16)  NOT NULL,
    payload         JSON         NOT NULL,
    error           TEXT         NOT NULL,
    failed_at       DATETIME(6)  NOT NULL,
    replayed_at     DATETIME(6)  NULL,
    PRIMARY KEY (id),
    KEY tidewater_dead_letters_pipeline_idx (pipeline, id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- Source tables whose existing rows each pipeline has copied (initial snapshot or a
-- later backfill of a table added to the configuration).
CREATE TABLE IF NOT EXISTS tidewater_snapshot_tables (
    pipeline     VARCHAR(191) NOT NULL,
    source_table VARCHAR(255) NOT NULL,
    copied_at    DATETIME(6)  NOT NULL,
    PRIMARY KEY (pipeline, source_table)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
