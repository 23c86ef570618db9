-- Flow control: workflows started on a queue, priorities, deduplication keys.
ALTER TABLE instances ADD COLUMN queue TEXT;
ALTER TABLE instances ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;
ALTER TABLE instances ADD COLUMN dedup_key TEXT;
ALTER TABLE instances ADD COLUMN started_at REAL;
CREATE UNIQUE INDEX instances_dedup ON instances (dedup_key)
    WHERE dedup_key IS NOT NULL AND status IN ('pending', 'running', 'compensating');
CREATE INDEX instances_queue ON instances (queue, started_at) WHERE queue IS NOT NULL;

-- Activity tasks sent to named queues (remote activities).
CREATE TABLE tasks (
    id          TEXT PRIMARY KEY,
    queue       TEXT NOT NULL,
    instance_id TEXT NOT NULL,
    run_id      TEXT NOT NULL,
    cmd         INTEGER NOT NULL,
    attempt     INTEGER NOT NULL,
    name        TEXT NOT NULL,
    input       TEXT NOT NULL,
    options     TEXT NOT NULL,
    priority    INTEGER NOT NULL DEFAULT 0,
    not_before  REAL NOT NULL,
    status      TEXT NOT NULL,
    owner       TEXT,
    created_at  REAL NOT NULL,
    started_at  REAL,
    finished_at REAL
) WITHOUT ROWID;
CREATE INDEX tasks_ready ON tasks (queue, priority DESC, not_before) WHERE status = 'ready';
CREATE INDEX tasks_running ON tasks (queue, owner) WHERE status = 'running';
CREATE INDEX tasks_started ON tasks (queue, started_at);
