"""The queue's SQL: the schema's migrations and the statements on the hot path.

Only text lives here: the other modules of this folder talk to sqlite3. Each statement the
dispatcher, the scanner or ``status`` runs often is a named constant, so the
test that checks their query plans for table scans checks the real thing.
"""

from __future__ import annotations

from bgsyncd.storage.contract import COLUMNS

# Migration n (1-based) brings a database from user_version n-1 to n.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE jobs (
            id INTEGER PRIMARY KEY,
            folder TEXT NOT NULL, relpath TEXT NOT NULL,
            size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, inode INTEGER NOT NULL,
            sha256 TEXT,
            state TEXT NOT NULL CHECK (state IN
                ('pending', 'in_flight', 'retry_wait', 'done', 'quarantined')),
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at REAL, lease_until REAL,
            resend INTEGER NOT NULL DEFAULT 0,
            last_error TEXT, http_status INTEGER, reason TEXT,
            first_seen REAL NOT NULL, queued_at REAL NOT NULL, updated_at REAL NOT NULL,
            outputs TEXT NOT NULL DEFAULT '[]',
            UNIQUE (folder, relpath))""",
        # claim: next folder with pending work, then its oldest job; counts; listings
        "CREATE INDEX jobs_by_state_folder ON jobs (state, folder, queued_at, id)",
        "CREATE INDEX jobs_by_state_queued ON jobs (state, queued_at)",
        "CREATE INDEX jobs_by_state_retry ON jobs (state, next_attempt_at)",
        """CREATE TABLE output_claims (
            folder TEXT NOT NULL, outpath TEXT NOT NULL,
            job_id INTEGER NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
            PRIMARY KEY (folder, outpath)) WITHOUT ROWID""",
        "CREATE INDEX output_claims_by_job ON output_claims (job_id)",
        "CREATE TABLE request_log (t REAL NOT NULL)",
        "CREATE INDEX request_log_by_t ON request_log (t)",
        "CREATE TABLE state (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID",
    ),
    # 2: the token of the claim that holds a job in flight (storage.JobStore's fencing).
    ("ALTER TABLE jobs ADD COLUMN claim_token TEXT",),
    # 3: output names claimed per tree (SPEC §9 renditions): '' is the folder's own
    # outbox (every older claim), a rendition's resolved outbox path its tree. The
    # key changes, so the table is made anew (SQLite cannot alter a primary key).
    (
        """CREATE TABLE output_claims_3 (
            folder TEXT NOT NULL, tree TEXT NOT NULL DEFAULT '', outpath TEXT NOT NULL,
            job_id INTEGER NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
            PRIMARY KEY (folder, tree, outpath)) WITHOUT ROWID""",
        "INSERT INTO output_claims_3 (folder, tree, outpath, job_id)"
        " SELECT folder, '', outpath, job_id FROM output_claims",
        "DROP TABLE output_claims",
        "ALTER TABLE output_claims_3 RENAME TO output_claims",
        "CREATE INDEX output_claims_by_job ON output_claims (job_id, tree)",
    ),
    # 4: hooks waiting to be delivered (SPEC §10), written with their job's
    # transition. ``next_at`` is when one is due: a claim moves it to the end
    # of its lease, so a claimer that dies leaves it due again.
    (
        """CREATE TABLE hooks (
            id INTEGER PRIMARY KEY,
            event_id TEXT NOT NULL, folder TEXT NOT NULL, kind TEXT NOT NULL,
            payload TEXT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            next_at REAL NOT NULL, claim_token TEXT, created_at REAL NOT NULL,
            UNIQUE (event_id, kind))""",
        "CREATE INDEX hooks_by_next ON hooks (next_at)",
    ),
    # 5: the status page's recent jobs (newest change first) without a scan of the table.
    ("CREATE INDEX jobs_by_updated ON jobs (updated_at)",),
)
SCHEMA_VERSION = len(MIGRATIONS)

# f-strings with "noqa: S608" splice in only this module's own constant SQL text.
# The hot-path statements, named so the tests can check their query plans.
SQL_IS_UNCHANGED = (
    "SELECT 1 FROM jobs WHERE folder = ? AND relpath = ? AND size = ? AND mtime_ns = ?"
    " AND inode = ?"
)
SQL_PROMOTE = (
    "UPDATE jobs SET state = 'pending', next_attempt_at = NULL, updated_at = ?"
    " WHERE state = 'retry_wait' AND next_attempt_at <= ?"
)
SQL_FIRST_FOLDER = "SELECT folder FROM jobs WHERE state = 'pending' ORDER BY folder LIMIT 1"
SQL_NEXT_FOLDER = (
    "SELECT folder FROM jobs WHERE state = 'pending' AND folder > ? ORDER BY folder LIMIT 1"
)
SQL_OLDEST_IN_FOLDER = (
    f"SELECT {COLUMNS} FROM jobs WHERE state = 'pending' AND folder = ?"  # noqa: S608
    " ORDER BY queued_at, id LIMIT 1"
)
SQL_ANY_PENDING = "SELECT 1 FROM jobs WHERE state = 'pending' LIMIT 1"
SQL_NEXT_RETRY = "SELECT MIN(next_attempt_at) FROM jobs WHERE state = 'retry_wait'"
SQL_ANY_PENDING_IN = "SELECT 1 FROM jobs WHERE state = 'pending' AND folder = ? LIMIT 1"
SQL_NEXT_RETRY_IN = (
    "SELECT MIN(next_attempt_at) FROM jobs WHERE state = 'retry_wait' AND folder = ?"
)
SQL_COUNTS = "SELECT folder, state, COUNT(*) FROM jobs GROUP BY state, folder"
SQL_OLDEST_OPEN = (
    "SELECT MIN(m) FROM ("
    " SELECT MIN(queued_at) AS m FROM jobs WHERE state = 'pending'"
    " UNION ALL SELECT MIN(queued_at) FROM jobs WHERE state = 'in_flight'"
    " UNION ALL SELECT MIN(queued_at) FROM jobs WHERE state = 'retry_wait')"
)
SQL_RECOVER = (
    "UPDATE jobs SET state = 'pending', resend = 1, lease_until = NULL, claim_token = NULL,"
    " updated_at = ? WHERE state = 'in_flight'"
)
SQL_QUARANTINED = (
    f"SELECT {COLUMNS} FROM jobs WHERE state = 'quarantined'"  # noqa: S608
    " ORDER BY folder, queued_at, id"
)
SQL_QUARANTINED_IN = (
    f"SELECT {COLUMNS} FROM jobs WHERE state = 'quarantined' AND folder = ?"  # noqa: S608
    " ORDER BY queued_at, id"
)
SQL_OWNER = "SELECT job_id FROM output_claims WHERE folder = ? AND tree = ? AND outpath = ?"
SQL_CLAIMED_BY = "SELECT outpath FROM output_claims WHERE job_id = ? AND tree = ?"
SQL_CLAIM = "INSERT INTO output_claims (folder, tree, outpath, job_id) VALUES (?, ?, ?, ?)"
# Something inside the folder a path would be (`a.png/...`): another output of the
# tree, or an input in an inbox folder of that name (every tree mirrors the inbox).
# ? ? ? ? is (folder, tree, path + "/", path + "0"); for inputs (folder, path + "/",
# path + "0"): '0' follows '/', and text compares bytewise here (BINARY).
SQL_OUTPUT_INSIDE = (
    "SELECT 1 FROM output_claims WHERE folder = ? AND tree = ? AND outpath >= ? AND outpath < ?"
    " LIMIT 1"
)
SQL_INPUT_INSIDE = "SELECT 1 FROM jobs WHERE folder = ? AND relpath >= ? AND relpath < ? LIMIT 1"
SQL_SINCE = "SELECT t FROM request_log WHERE t >= ? ORDER BY t"
# New path -> pending; changed stat -> pending again unless a worker holds it
# (the worker sees the change itself). rowcount 0 means nothing was queued.
SQL_UPSERT = """
INSERT INTO jobs (folder, relpath, size, mtime_ns, inode, state, first_seen, queued_at,
                  updated_at)
VALUES (?, ?, ?, ?, ?, 'pending', ?, ?, ?)
ON CONFLICT (folder, relpath) DO UPDATE SET
    size = excluded.size, mtime_ns = excluded.mtime_ns, inode = excluded.inode,
    sha256 = NULL, state = 'pending', attempts = 0, next_attempt_at = NULL,
    lease_until = NULL, resend = 0, last_error = NULL, http_status = NULL, reason = NULL,
    queued_at = excluded.queued_at, updated_at = excluded.updated_at
WHERE state != 'in_flight'
    AND (size != excluded.size OR mtime_ns != excluded.mtime_ns OR inode != excluded.inode)
"""
