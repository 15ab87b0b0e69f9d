"""The schema: versioned migrations, applied in order at start; PRAGMA user_version records how far."""

from __future__ import annotations

import sqlite3

from service.store.errors import StoreError

# Versioned schema migrations, applied in order at start; PRAGMA user_version records how far.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE notifications (
            id INTEGER PRIMARY KEY,
            received_at TEXT NOT NULL,
            receiver TEXT NOT NULL,
            status TEXT NOT NULL,
            group_key TEXT NOT NULL,
            external_url TEXT NOT NULL,
            alert_count INTEGER NOT NULL,
            body TEXT NOT NULL -- exactly as received, unknown fields included
        )""",
        # An alert occurrence is Alertmanager's alert identity plus its start: re-sends share it.
        """CREATE TABLE occurrences (
            id INTEGER PRIMARY KEY,
            fingerprint TEXT NOT NULL,
            starts_at TEXT NOT NULL,
            alertname TEXT NOT NULL,
            labels TEXT NOT NULL,
            annotations TEXT NOT NULL,
            generator_url TEXT NOT NULL,
            status TEXT NOT NULL,
            ends_at TEXT,
            first_received_at TEXT NOT NULL,
            last_received_at TEXT NOT NULL,
            receive_count INTEGER NOT NULL,
            UNIQUE (fingerprint, starts_at)
        )""",
        # Every alert of every notification, in arrival order: the dispatcher's durable queue.
        # previous_status is NULL for a new occurrence and differs from status on a transition.
        """CREATE TABLE alert_events (
            id INTEGER PRIMARY KEY,
            notification_id INTEGER NOT NULL REFERENCES notifications(id),
            occurrence_id INTEGER NOT NULL REFERENCES occurrences(id),
            status TEXT NOT NULL,
            previous_status TEXT,
            dispatched_at TEXT
        )""",
        "CREATE INDEX alert_events_undispatched ON alert_events(id) WHERE dispatched_at IS NULL",
        "CREATE INDEX alert_events_occurrence ON alert_events(occurrence_id)",
    ),
    (
        # One row per (rule, alert occurrence) decision that created a run or refused one.
        """CREATE TABLE executions (
            id TEXT PRIMARY KEY,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            rule TEXT NOT NULL,
            rule_version TEXT NOT NULL,
            playbook TEXT NOT NULL,
            playbook_version TEXT NOT NULL,
            target TEXT NOT NULL,
            occurrence_id INTEGER REFERENCES occurrences(id),
            fingerprint TEXT NOT NULL,
            alertname TEXT NOT NULL,
            mode TEXT NOT NULL,
            params TEXT NOT NULL,
            state TEXT NOT NULL,
            reason TEXT NOT NULL DEFAULT '',
            started_at TEXT,
            finished_at TEXT
        )""",
        "CREATE INDEX executions_rule_target ON executions(rule, target, created_at)",
        "CREATE INDEX executions_occurrence ON executions(occurrence_id, rule)",
        "CREATE INDEX executions_state ON executions(state)",
        "CREATE INDEX executions_created ON executions(created_at)",
        # Each attempt of each step, in order; output is already bounded by the step.
        """CREATE TABLE execution_steps (
            id INTEGER PRIMARY KEY,
            execution_id TEXT NOT NULL REFERENCES executions(id) ON DELETE CASCADE,
            phase TEXT NOT NULL,
            name TEXT NOT NULL,
            type TEXT NOT NULL,
            attempt INTEGER NOT NULL,
            started_at TEXT NOT NULL,
            duration_s REAL NOT NULL,
            ok INTEGER NOT NULL,
            status TEXT NOT NULL,
            summary TEXT NOT NULL,
            output TEXT NOT NULL,
            exit_code INTEGER,
            data TEXT NOT NULL
        )""",
        "CREATE INDEX execution_steps_execution ON execution_steps(execution_id, id)",
        # The timeline: state transitions, decisions, repeats, verification polls, escalations.
        """CREATE TABLE execution_events (
            id INTEGER PRIMARY KEY,
            execution_id TEXT NOT NULL REFERENCES executions(id) ON DELETE CASCADE,
            at TEXT NOT NULL,
            kind TEXT NOT NULL,
            message TEXT NOT NULL,
            data TEXT NOT NULL
        )""",
        "CREATE INDEX execution_events_execution ON execution_events(execution_id, id)",
    ),
    (
        # Why a run was refused, as a key (cooldown, budget_spent, storm, ...): the text is in reason.
        "ALTER TABLE executions ADD COLUMN refusal TEXT",
        "CREATE INDEX executions_refusal ON executions(rule, target, refusal, created_at)",
        # Maintenance: automation paused for a rule and/or a target ('*' is every one).
        """CREATE TABLE pauses (
            id INTEGER PRIMARY KEY,
            rule TEXT NOT NULL,
            target TEXT NOT NULL,
            reason TEXT NOT NULL,
            created_by TEXT NOT NULL,
            created_at TEXT NOT NULL,
            until TEXT,
            cleared_at TEXT
        )""",
        # A person resetting a tripped budget (and cooldown) for (rule, target).
        """CREATE TABLE limit_resets (
            id INTEGER PRIMARY KEY,
            rule TEXT NOT NULL,
            target TEXT NOT NULL,
            reset_by TEXT NOT NULL,
            reset_at TEXT NOT NULL
        )""",
        "CREATE INDEX limit_resets_rule_target ON limit_resets(rule, target, reset_at)",
    ),
    (
        # The storm guard counts admitted runs in its window and asks whether a storm refusal was
        # already escalated: both must stay cheap while a storm writes thousands of refused rows.
        "CREATE INDEX executions_admitted ON executions(created_at) WHERE state != 'refused' AND mode = 'enforce'",
        "CREATE INDEX executions_refusal_time ON executions(refusal, created_at)",
    ),
    (
        # Escalations (service/escalation/escalator.py): one row each time a person must be told about an
        # execution; kind decides the alert (failed | approval); level is the last level notified.
        """CREATE TABLE escalations (
            id TEXT PRIMARY KEY,
            execution_id TEXT NOT NULL REFERENCES executions(id) ON DELETE CASCADE,
            kind TEXT NOT NULL,
            reason TEXT NOT NULL,
            severity TEXT NOT NULL,
            opened_at TEXT NOT NULL,
            state TEXT NOT NULL, -- open | acknowledged | closed
            level INTEGER NOT NULL,
            facts TEXT NOT NULL, -- what the messages say, fixed when it opened
            closed_at TEXT,
            acked_by TEXT,
            close_reason TEXT
        )""",
        "CREATE INDEX escalations_open ON escalations(execution_id) WHERE state = 'open'",
        # One row per message per channel; dedup_key makes "once per level per channel" a constraint.
        """CREATE TABLE escalation_outbox (
            id INTEGER PRIMARY KEY,
            escalation_id TEXT NOT NULL REFERENCES escalations(id) ON DELETE CASCADE,
            dedup_key TEXT NOT NULL UNIQUE,
            channel TEXT NOT NULL,
            kind TEXT NOT NULL, -- notify | close
            level INTEGER NOT NULL,
            payload TEXT NOT NULL,
            created_at TEXT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at TEXT NOT NULL,
            delivered_at TEXT,
            superseded_at TEXT, -- the escalation closed before this was sent
            abandoned_at TEXT, -- retries spent
            last_error TEXT NOT NULL DEFAULT ''
        )""",
        """CREATE INDEX escalation_outbox_due ON escalation_outbox(next_attempt_at)
            WHERE delivered_at IS NULL AND superseded_at IS NULL AND abandoned_at IS NULL""",
        "CREATE INDEX escalation_outbox_escalation ON escalation_outbox(escalation_id)",
        # Approval requests outlive the process that waits on them; one pending per execution.
        """CREATE TABLE approvals (
            id INTEGER PRIMARY KEY,
            execution_id TEXT NOT NULL REFERENCES executions(id) ON DELETE CASCADE,
            step TEXT NOT NULL,
            prompt TEXT NOT NULL,
            requested_at TEXT NOT NULL,
            deadline TEXT NOT NULL,
            decided_at TEXT,
            decision TEXT, -- approved | denied | expired
            approver TEXT
        )""",
        "CREATE UNIQUE INDEX approvals_pending ON approvals(execution_id) WHERE decided_at IS NULL",
    ),
    (
        # The pages (service/web/pages.py) with 100,000 executions: each index filter reads its page off an
        # index already in the list's order (created_at DESC, id DESC), deep offsets skip index entries
        # only, and the per-rule figures count (rule, state) and take the median time to a verified
        # fix from one covering index (its expression is store._FIX_SECONDS, character for character).
        "CREATE INDEX executions_created_id ON executions(created_at, id)",
        "CREATE INDEX executions_state_created ON executions(state, created_at, id)",
        "CREATE INDEX executions_rule_created ON executions(rule, created_at, id)",
        "CREATE INDEX executions_target_created ON executions(target, created_at, id)",
        "CREATE INDEX executions_alertname_created ON executions(alertname, created_at, id)",
        """CREATE INDEX executions_rule_state_fix
            ON executions(rule, state, (julianday(finished_at) - julianday(created_at)) * 86400.0)""",
    ),
    (
        # The status before the latest delivery (NULL until a second one): one UPSERT ... RETURNING
        # both records a delivery and says whether it was a transition, instead of a SELECT first.
        "ALTER TABLE occurrences ADD COLUMN previous_status TEXT",
        # Only the hourly prune asked alert_events by occurrence, and it does without: one B-tree
        # less to update for every alert received.
        "DROP INDEX alert_events_occurrence",
    ),
    (
        # The database refuses a second run for the same (rule, alert occurrence), whatever raced to
        # make it: occurrence_run numbers a rule's runs of one occurrence (1, then 2 for a rerun_after
        # ...); refusals have none (NULLs are distinct in a UNIQUE index). Existing rows are numbered
        # in creation order.
        "ALTER TABLE executions ADD COLUMN occurrence_run INTEGER",
        """UPDATE executions SET occurrence_run = (
            SELECT n FROM (
                SELECT id, row_number() OVER (PARTITION BY rule, occurrence_id ORDER BY created_at, id) AS n
                FROM executions WHERE state != 'refused' AND occurrence_id IS NOT NULL
            ) numbered WHERE numbered.id = executions.id
        )""",
        "CREATE UNIQUE INDEX executions_one_run_per_occurrence ON executions(rule, occurrence_id, occurrence_run)",
    ),
    (
        # How each occurrence first came: by a webhook delivery or found by the reconciler in
        # Alertmanager's active alerts. Set when the occurrence is first inserted, never changed.
        "ALTER TABLE occurrences ADD COLUMN source TEXT NOT NULL DEFAULT 'webhook'",
        # The reconciler's question "which occurrences does the store think are firing", oldest
        # first: a partial index holds only those, a small fraction of the table.
        "CREATE INDEX occurrences_firing ON occurrences(starts_at, id) WHERE status = 'firing'",
    ),
    (
        # A refusal whose page waits: a run for its target was running or had just verified a fix
        # when it was refused, so it pages at page_due_at only if its alert still fires then.
        "ALTER TABLE executions ADD COLUMN page_due_at TEXT",
        "CREATE INDEX executions_page_due ON executions(page_due_at) WHERE page_due_at IS NOT NULL",
        # Paging asks per target (across rules) what runs there now, and which runs escalated.
        "CREATE INDEX executions_target ON executions(target, created_at)",
        "CREATE INDEX escalations_execution ON escalations(execution_id, opened_at)",
        # The process group of every step running now, written as the step starts its process and
        # deleted when it ends: what a crash leaves here is ended (TERM, then KILL) before recovery
        # resumes or escalates the run. boot_id and the leader's start time tell a group that is
        # still the step's from a reused pid.
        """CREATE TABLE step_processes (
            execution_id TEXT NOT NULL REFERENCES executions(id) ON DELETE CASCADE,
            step TEXT NOT NULL,
            pgid INTEGER NOT NULL,
            boot_id TEXT NOT NULL,
            leader_start TEXT NOT NULL,
            started_at TEXT NOT NULL,
            PRIMARY KEY (execution_id, pgid)
        )""",
    ),
)


def migrate(conn: sqlite3.Connection) -> None:
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if version > len(MIGRATIONS):
        raise StoreError(f"store schema version {version} is newer than this remediator knows ({len(MIGRATIONS)})")
    for number, statements in enumerate(MIGRATIONS[version:], start=version + 1):
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in statements:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version={number}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
