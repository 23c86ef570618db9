-- Snapshot of sqlite_master after applying every SQLite migration
-- (src/stalwart/store/sql/sqlite/). Generated; do not edit by hand. Regenerate with:
--     STALWART_UPDATE_SCHEMA_SNAPSHOT=1 .venv/bin/pytest tests/migrations
--
-- migration 1: 0001_initial.sql
-- migration 2: 0002_worker_serves.sql
-- migration 3: 0003_parent_index.sql
-- migration 4: 0004_search_attributes.sql
-- migration 5: 0005_sagas.sql
-- migration 6: 0006_queues.sql
-- migration 7: 0007_recoveries.sql
-- migration 8: 0008_events_in_commit_order.sql

-- index events_run_seq (on events)
CREATE UNIQUE INDEX events_run_seq ON events (run_id, seq);

-- index inbox_instance (on inbox)
CREATE INDEX inbox_instance ON inbox (instance_id, id);

-- index instances_created (on instances)
CREATE INDEX instances_created ON instances (created_at, id);

-- index instances_dedup (on instances)
CREATE UNIQUE INDEX instances_dedup ON instances (dedup_key)
    WHERE dedup_key IS NOT NULL AND status IN ('pending', 'running', 'compensating');

-- index instances_due (on instances)
CREATE INDEX instances_due ON instances (wake_at)
    WHERE owner IS NULL AND status IN ('pending', 'running', 'compensating');

-- index instances_name_status (on instances)
CREATE INDEX instances_name_status ON instances (name, status, created_at);

-- index instances_owner (on instances)
CREATE INDEX instances_owner ON instances (owner) WHERE owner IS NOT NULL;

-- index instances_parent (on instances)
CREATE INDEX instances_parent ON instances (parent_id, created_at) WHERE parent_id IS NOT NULL;

-- index instances_queue (on instances)
CREATE INDEX instances_queue ON instances (queue, started_at) WHERE queue IS NOT NULL;

-- index instances_status (on instances)
CREATE INDEX instances_status ON instances (status, created_at);

-- index sqlite_autoindex_instances_1 (on instances)
-- (implicit, no SQL)

-- index sqlite_autoindex_workers_1 (on workers)
-- (implicit, no SQL)

-- index tasks_ready (on tasks)
CREATE INDEX tasks_ready ON tasks (queue, priority DESC, not_before) WHERE status = 'ready';

-- index tasks_running (on tasks)
CREATE INDEX tasks_running ON tasks (queue, owner) WHERE status = 'running';

-- index tasks_started (on tasks)
CREATE INDEX tasks_started ON tasks (queue, started_at);

-- table events (on events)
CREATE TABLE "events" (
    id          INTEGER PRIMARY KEY,
    run_id      TEXT NOT NULL,
    seq         INTEGER NOT NULL,
    instance_id TEXT NOT NULL,
    type        TEXT NOT NULL,
    time        REAL NOT NULL,
    data        TEXT NOT NULL
);

-- table inbox (on inbox)
CREATE TABLE inbox (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    instance_id TEXT NOT NULL,
    kind        TEXT NOT NULL,
    name        TEXT NOT NULL,
    payload     TEXT NOT NULL,
    time        REAL NOT NULL
);

-- table instances (on instances)
CREATE TABLE instances (
    id           TEXT PRIMARY KEY,
    name         TEXT NOT NULL,
    version      INTEGER NOT NULL,
    status       TEXT NOT NULL,
    run_id       TEXT NOT NULL,
    input        TEXT NOT NULL,
    output       TEXT,
    error        TEXT,
    created_at   REAL NOT NULL,
    updated_at   REAL NOT NULL,
    owner        TEXT,
    epoch        INTEGER NOT NULL,
    wake_at      REAL,
    history_len  INTEGER NOT NULL,
    current_step TEXT,
    parent_id    TEXT
, search_attributes TEXT, needs_intervention INTEGER NOT NULL DEFAULT 0, queue TEXT, priority INTEGER NOT NULL DEFAULT 0, dedup_key TEXT, started_at REAL, recoveries INTEGER NOT NULL DEFAULT 0);

-- table sqlite_sequence (on sqlite_sequence)
CREATE TABLE sqlite_sequence(name,seq);

-- table stalwart_schema_version (on stalwart_schema_version)
CREATE TABLE stalwart_schema_version (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL);

-- table tasks (on tasks)
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

-- table workers (on workers)
CREATE TABLE workers (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    host       TEXT NOT NULL,
    pid        INTEGER NOT NULL,
    started_at REAL NOT NULL,
    expires_at REAL NOT NULL
, serves TEXT NOT NULL DEFAULT '[]');
