-- Tidewater bookkeeping tables in a PostgreSQL target. Idempotent: run at every start.

-- One row per pipeline: the source position of the last applied source transaction,
-- written in the same target transaction as the data it covers.
CREATE TABLE IF NOT EXISTS public.tidewater_checkpoints (
    pipeline          text        PRIMARY KEY,
    source_position   text        NOT NULL,
    snapshot_complete boolean     NOT NULL DEFAULT false,
    updated_at        timestamptz NOT NULL DEFAULT now()
);

-- Events the target rejected (constraint, type, value out of range), kept for replay.
CREATE TABLE IF NOT EXISTS public.tidewater_dead_letters (
    id              bigserial   PRIMARY KEY,
    pipeline        text        NOT NULL,
    source_position text        NOT NULL,
    source_table    text        NOT NULL,
    target_table    text        NOT NULL,
    op              text        NOT NULL,
    payload         jsonb       NOT NULL,
    error           text        NOT NULL,
    failed_at       timestamptz NOT NULL DEFAULT now(),
    replayed_at     timestamptz
);

CREATE INDEX IF NOT EXISTS tidewater_dead_letters_pipeline_idx
    ON public.tidewater_dead_letters (pipeline, id);

-- Source tables whose existing rows each pipeline has copied (initial snapshot or a
-- later backfill of a table added to the configuration).
CREATE TABLE IF NOT EXISTS public.tidewater_snapshot_tables (
    pipeline     text        NOT NULL,
    source_table text        NOT NULL,
    copied_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (pipeline, source_table)
);
