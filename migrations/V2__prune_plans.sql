-- Deletion plans of `prune: approval` jobs, waiting for an authorised approval.
CREATE TABLE prune_plans (
    id          bigserial PRIMARY KEY,
    job         text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    created_by  text NOT NULL,
    status      text NOT NULL,              -- pending | approved | superseded
    decided_at  timestamptz,
    decided_by  text,
    plan        jsonb NOT NULL              -- [{backup_id, keep, reasons, targets}]
);
CREATE INDEX prune_plans_job_pending ON prune_plans (job) WHERE status = 'pending';
