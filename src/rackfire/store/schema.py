"""The store's tables: created if missing, then the columns added since a table first
shipped (a store made by an older rackfire gains them, with their defaults, when opened)."""

SCHEMA = """
CREATE TABLE IF NOT EXISTS stacks (
    name TEXT PRIMARY KEY,
    spec TEXT NOT NULL,
    generation INTEGER NOT NULL,
    observed_generation INTEGER NOT NULL DEFAULT 0,
    deleting INTEGER NOT NULL DEFAULT 0,
    subnet TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending',
    message TEXT NOT NULL DEFAULT '',
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS ips (
    stack TEXT NOT NULL, role TEXT NOT NULL, idx INTEGER NOT NULL, ip TEXT NOT NULL,
    PRIMARY KEY (stack, role, idx), UNIQUE (stack, ip)
);
CREATE TABLE IF NOT EXISTS actions (
    id TEXT PRIMARY KEY,
    stack TEXT NOT NULL,
    generation INTEGER NOT NULL,
    kind TEXT NOT NULL,
    instance TEXT NOT NULL,
    reason TEXT NOT NULL,
    state TEXT NOT NULL,
    created REAL NOT NULL,
    finished REAL,
    error TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS actions_by_stack ON actions (stack, generation);
CREATE TABLE IF NOT EXISTS instance_status (
    stack TEXT NOT NULL, role TEXT NOT NULL, idx INTEGER NOT NULL,
    health TEXT NOT NULL DEFAULT 'unknown',
    run REAL,
    fails INTEGER NOT NULL DEFAULT 0,
    checked REAL,
    restarts INTEGER NOT NULL DEFAULT 0,
    last_restart REAL,
    message TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (stack, role, idx)
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time REAL NOT NULL,
    actor TEXT NOT NULL,
    stack TEXT NOT NULL,
    target TEXT NOT NULL,
    action TEXT NOT NULL,
    result TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS events_by_stack ON events (stack, id);
CREATE TABLE IF NOT EXISTS releases (
    stack TEXT NOT NULL, role TEXT NOT NULL, version INTEGER NOT NULL,
    source TEXT NOT NULL, label TEXT NOT NULL, layer TEXT NOT NULL,
    image TEXT NOT NULL, image_digest TEXT NOT NULL,
    actor TEXT NOT NULL, created REAL NOT NULL,
    status TEXT NOT NULL, reason TEXT NOT NULL DEFAULT '', updated REAL NOT NULL,
    PRIMARY KEY (stack, role, version)
);
CREATE TABLE IF NOT EXISTS join_tokens (
    id TEXT PRIMARY KEY, secret_hash TEXT NOT NULL, created REAL NOT NULL,
    expires REAL NOT NULL, uses_left INTEGER NOT NULL, actor TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS hosts (
    name TEXT PRIMARY KEY, credential_hash TEXT NOT NULL, labels TEXT NOT NULL,
    facts TEXT NOT NULL, state TEXT NOT NULL DEFAULT 'ready',
    joined REAL NOT NULL, last_seen REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS applied_hosts (
    name TEXT PRIMARY KEY, declared TEXT NOT NULL, applied REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS placements (
    stack TEXT NOT NULL, role TEXT NOT NULL, idx INTEGER NOT NULL, host TEXT NOT NULL,
    PRIMARY KEY (stack, role, idx)
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS vnis (stack TEXT PRIMARY KEY, vni INTEGER NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS migrations (
    stack TEXT NOT NULL, role TEXT NOT NULL, idx INTEGER NOT NULL,
    source TEXT NOT NULL, target TEXT NOT NULL, step TEXT NOT NULL,
    started REAL NOT NULL, actor TEXT NOT NULL,
    PRIMARY KEY (stack, role, idx)
);
CREATE TABLE IF NOT EXISTS rollout_waits (
    stack TEXT NOT NULL, role TEXT NOT NULL, idx INTEGER NOT NULL,
    kind TEXT NOT NULL, action_id TEXT NOT NULL, since REAL NOT NULL, timeout REAL NOT NULL,
    PRIMARY KEY (stack, role, idx)
);
CREATE TABLE IF NOT EXISTS snapshots (
    stack TEXT NOT NULL, name TEXT NOT NULL, scope TEXT NOT NULL, created REAL NOT NULL,
    actor TEXT NOT NULL, state TEXT NOT NULL, generation INTEGER NOT NULL,
    spec TEXT NOT NULL, overrides TEXT NOT NULL, releases TEXT NOT NULL,
    copies TEXT NOT NULL DEFAULT '[]', error TEXT NOT NULL DEFAULT '',
    temporary INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (stack, name)
);
CREATE TABLE IF NOT EXISTS seeds (
    stack TEXT NOT NULL, role TEXT NOT NULL, idx INTEGER NOT NULL,
    snapshot_stack TEXT NOT NULL, snapshot TEXT NOT NULL, source TEXT NOT NULL,
    host TEXT NOT NULL,
    PRIMARY KEY (stack, role, idx)
);
CREATE TABLE IF NOT EXISTS primaries (
    stack TEXT NOT NULL, role TEXT NOT NULL, idx INTEGER NOT NULL, term INTEGER NOT NULL,
    since REAL NOT NULL,
    PRIMARY KEY (stack, role)
);
CREATE TABLE IF NOT EXISTS repositories (
    name TEXT PRIMARY KEY, url TEXT NOT NULL, password TEXT NOT NULL, env TEXT NOT NULL,
    created REAL NOT NULL, actor TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS backups (
    stack TEXT NOT NULL, name TEXT NOT NULL, repository TEXT NOT NULL, created REAL NOT NULL,
    actor TEXT NOT NULL, state TEXT NOT NULL, snapshot TEXT NOT NULL,
    parts TEXT NOT NULL DEFAULT '[]', error TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (stack, name)
);
CREATE TABLE IF NOT EXISTS replicas (
    stack TEXT NOT NULL, role TEXT NOT NULL, idx INTEGER NOT NULL, standby TEXT NOT NULL,
    token TEXT NOT NULL, taken REAL NOT NULL, shipped REAL NOT NULL,
    PRIMARY KEY (stack, role, idx)
);
CREATE TABLE IF NOT EXISTS runs (
    stack TEXT NOT NULL, number INTEGER NOT NULL, role TEXT NOT NULL, kind TEXT NOT NULL,
    state TEXT NOT NULL, created REAL NOT NULL, command TEXT NOT NULL, slot REAL,
    timeout REAL NOT NULL, started REAL, ended REAL, exit_code INTEGER, signal INTEGER,
    host TEXT NOT NULL, reason TEXT NOT NULL, log TEXT NOT NULL, release INTEGER NOT NULL,
    actor TEXT NOT NULL,
    PRIMARY KEY (stack, number)
);
-- A job's slot is claimed once: the insert that claims it fails for any other.
CREATE UNIQUE INDEX IF NOT EXISTS runs_slot ON runs (stack, role, slot) WHERE slot IS NOT NULL;
CREATE TABLE IF NOT EXISTS run_clock (
    stack TEXT NOT NULL, role TEXT NOT NULL, last_slot REAL NOT NULL,
    PRIMARY KEY (stack, role)
);
CREATE TABLE IF NOT EXISTS run_numbers (stack TEXT PRIMARY KEY, last INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS overrides (
    stack TEXT NOT NULL, role TEXT NOT NULL, field TEXT NOT NULL,
    value TEXT NOT NULL, actor TEXT NOT NULL, time REAL NOT NULL,
    PRIMARY KEY (stack, role, field)
);
"""


ADDED_COLUMNS = [
    ("instance_status", "run", "REAL"),
    ("instance_status", "failures", "TEXT NOT NULL DEFAULT '[]'"),
    ("instance_status", "stopped", "INTEGER NOT NULL DEFAULT 0"),
    ("instance_status", "failed", "TEXT NOT NULL DEFAULT ''"),
    ("instance_status", "restart_requested", "REAL"),
    ("stacks", "actor", "TEXT NOT NULL DEFAULT ''"),
    ("stacks", "keep_data", "INTEGER NOT NULL DEFAULT 0"),
    ("hosts", "agent_key", "TEXT NOT NULL DEFAULT ''"),
    ("hosts", "address", "TEXT NOT NULL DEFAULT ''"),
    ("hosts", "epoch", "INTEGER NOT NULL DEFAULT 1"),
    ("placements", "incarnation", "INTEGER NOT NULL DEFAULT 0"),
]
