-- strata's state database: run history, audit trail, schedule claims.

-- One row per backup run, whoever started it.
CREATE TABLE runs (
    id            text PRIMARY KEY,
    job           text NOT NULL,
    trigger       text NOT NULL,            -- schedule | api | cli | catch-up
    scheduled_for timestamptz,
    started_at    timestamptz NOT NULL,
    finished_at   timestamptz,
    status        text NOT NULL,            -- running | success | degraded | failed | aborted
    backup_id     text,
    raw_bytes     bigint,
    stored_bytes  bigint,
    error         text,
    targets       jsonb NOT NULL DEFAULT '{}',
    host          text NOT NULL
);
CREATE INDEX runs_job_started ON runs (job, started_at DESC);

-- Append-only record of every operation.
CREATE TABLE audit_log (
    id      bigserial PRIMARY KEY,
    at      timestamptz NOT NULL DEFAULT now(),
    actor   text NOT NULL,                  -- scheduler | api:<token fingerprint> | cli:<user>
    action  text NOT NULL,                  -- backup | restore | verify | prune | delete | api
    job     text,
    run_id  text,
    detail  jsonb NOT NULL DEFAULT '{}'
);
CREATE FUNCTION audit_log_is_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only';
END $$;
CREATE TRIGGER audit_log_no_update_or_delete BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_is_append_only();

-- A scheduled slot is run by exactly one of the daemons sharing this database.
CREATE TABLE schedule_claims (
    job        text NOT NULL,
    slot       timestamptz NOT NULL,
    run_id     text NOT NULL,
    claimed_by text NOT NULL,
    claimed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job, slot)
);
