-- Which migrations have run: a start that finds every one recorded runs no DDL (DDL takes
-- an ACCESS EXCLUSIVE lock even when it changes nothing, so it would wait behind any
-- long transaction that reads the bookkeeping tables).
CREATE TABLE IF NOT EXISTS public.tidewater_migrations (
    name       text PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
);
