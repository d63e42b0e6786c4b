-- Restore tests: the newest readable backup restored into a scratch database,
-- checked and dropped. `seconds` is the measured recovery time (RTO).
CREATE TABLE restore_tests (
    id          bigserial PRIMARY KEY,
    job         text NOT NULL,
    backup_id   text,
    target      text,
    started_at  timestamptz NOT NULL,
    seconds     double precision NOT NULL,
    ok          boolean NOT NULL,
    error       text,
    tables      integer NOT NULL,
    rows        bigint NOT NULL,
    host        text NOT NULL
);
CREATE INDEX restore_tests_job_started ON restore_tests (job, started_at DESC);
