-- Stalwart schema v1 for PostgreSQL. Applied with search_path set to the store's schema
-- (``?schema=``, default ``stalwart``), so one database can hold several applications.
-- Identifiers use the "C" collation: ordering (listing cursors) is by code point, as in
-- the SQLite and memory stores, whatever the database's default collation.

CREATE TABLE instances (
    id                 text COLLATE "C" PRIMARY KEY,
    name               text COLLATE "C" NOT NULL,
    version            integer NOT NULL,
    status             text NOT NULL,
    run_id             text COLLATE "C" NOT NULL,
    input              text NOT NULL,
    output             text,
    error              text,
    created_at         double precision NOT NULL,
    updated_at         double precision NOT NULL,
    owner              text COLLATE "C",
    epoch              bigint NOT NULL,
    wake_at            double precision,
    history_len        integer NOT NULL,
    current_step       text,
    parent_id          text COLLATE "C",
    search_attributes  jsonb,
    -- A saga whose compensation could not finish: failed until an operator reopens it.
    needs_intervention boolean NOT NULL DEFAULT false,
    -- Flow control: the queue an instance was started on, its priority, its
    -- deduplication key and when a worker first claimed it.
    queue              text COLLATE "C",
    priority           integer NOT NULL DEFAULT 0,
    dedup_key          text COLLATE "C",
    started_at         double precision
);
-- Unowned runnable instances, by due time: what a worker's claim scans. Ending,
-- suspending or parking an instance clears its wake_at, so the rows are (nearly) only
-- active ones without the predicate naming the active statuses, which may grow.
CREATE INDEX instances_due ON instances (wake_at)
    WHERE owner IS NULL AND wake_at IS NOT NULL;
CREATE INDEX instances_owner ON instances (owner) WHERE owner IS NOT NULL;
CREATE INDEX instances_created ON instances (created_at, id);
CREATE INDEX instances_name_status ON instances (name, status, created_at);
CREATE INDEX instances_status ON instances (status, created_at);
-- Children of an instance (parent-close policies, describe(), listing by parent).
CREATE INDEX instances_parent ON instances (parent_id, created_at) WHERE parent_id IS NOT NULL;
-- At most one active instance per deduplication key.
CREATE UNIQUE INDEX instances_dedup ON instances (dedup_key)
    WHERE dedup_key IS NOT NULL AND status IN ('pending', 'running', 'compensating');
CREATE INDEX instances_queue ON instances (queue, started_at) WHERE queue IS NOT NULL;
-- Listing by search attributes (containment, @>).
CREATE INDEX instances_search ON instances USING gin (search_attributes jsonb_path_ops)
    WHERE search_attributes IS NOT NULL;

-- Append-only history; (run_id, seq) is unique, which backs optimistic concurrency.
CREATE TABLE events (
    run_id      text COLLATE "C" NOT NULL,
    seq         integer NOT NULL,
    instance_id text COLLATE "C" NOT NULL,
    type        text NOT NULL,
    time        double precision NOT NULL,
    data        text NOT NULL,
    PRIMARY KEY (run_id, seq)
);

-- Signals, cancellation requests and child outcomes not yet moved into history. Ids of
-- one instance's messages are drawn while holding that instance's row lock, so they
-- increase in commit order.
CREATE TABLE inbox (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    instance_id text COLLATE "C" NOT NULL,
    kind        text NOT NULL,
    name        text NOT NULL,
    payload     text NOT NULL,
    time        double precision NOT NULL
);
CREATE INDEX inbox_instance ON inbox (instance_id, id);

-- Worker incarnations, their liveness leases and what they serve ("name@version").
CREATE TABLE workers (
    id         text COLLATE "C" PRIMARY KEY,
    name       text NOT NULL,
    host       text NOT NULL,
    pid        integer NOT NULL,
    started_at double precision NOT NULL,
    expires_at double precision NOT NULL,
    serves     text[] NOT NULL DEFAULT '{}'
);

-- Activity tasks sent to named queues (remote activities).
CREATE TABLE tasks (
    id          text COLLATE "C" PRIMARY KEY,
    queue       text COLLATE "C" NOT NULL,
    instance_id text COLLATE "C" NOT NULL,
    run_id      text COLLATE "C" NOT NULL,
    cmd         integer NOT NULL,
    attempt     integer NOT NULL,
    name        text NOT NULL,
    input       text NOT NULL,
    options     text NOT NULL,
    priority    integer NOT NULL DEFAULT 0,
    not_before  double precision NOT NULL,
    status      text NOT NULL,
    owner       text COLLATE "C",
    created_at  double precision NOT NULL,
    started_at  double precision,
    finished_at double precision
);
CREATE INDEX tasks_ready ON tasks (queue, priority DESC, not_before) WHERE status = 'ready';
CREATE INDEX tasks_running ON tasks (queue, owner) WHERE status = 'running';
CREATE INDEX tasks_started ON tasks (queue, started_at);
