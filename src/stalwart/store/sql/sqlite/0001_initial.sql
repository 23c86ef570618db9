-- Stalwart schema v1 for SQLite.
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
);
-- Unowned runnable instances, by due time: what a worker's claim scans.
CREATE INDEX instances_due ON instances (wake_at)
    WHERE owner IS NULL AND status IN ('pending', 'running');
CREATE INDEX instances_owner ON instances (owner) WHERE owner IS NOT NULL;
CREATE INDEX instances_created ON instances (created_at, id);
CREATE INDEX instances_name_status ON instances (name, status, created_at);
CREATE INDEX instances_status ON instances (status, created_at);

-- Append-only history; (run_id, seq) is unique, which backs optimistic concurrency.
CREATE TABLE events (
    run_id      TEXT NOT NULL,
    seq         INTEGER NOT NULL,
    instance_id TEXT NOT NULL,
    type        TEXT NOT NULL,
    time        REAL NOT NULL,
    data        TEXT NOT NULL,
    PRIMARY KEY (run_id, seq)
) WITHOUT ROWID;

-- Signals and cancellation requests not yet moved into history.
CREATE TABLE inbox (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    instance_id TEXT NOT NULL,
    kind        TEXT NOT NULL,
    name        TEXT NOT NULL,
    payload     TEXT NOT NULL,
    time        REAL NOT NULL
);
CREATE INDEX inbox_instance ON inbox (instance_id, id);

-- Worker incarnations and their liveness leases.
CREATE TABLE workers (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    host       TEXT NOT NULL,
    pid        INTEGER NOT NULL,
    started_at REAL NOT NULL,
    expires_at REAL NOT NULL
);
