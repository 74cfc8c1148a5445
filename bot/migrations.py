"""The database schema as ordered migrations, applied above `PRAGMA user_version` (SQLite, by
bot/sqlite.py) or the version in `voices_schema` (PostgreSQL, by bot/postgres.py).

Each entry is one version: a reason (why it exists) and the SQL. Never edit a shipped entry;
append a new one. Money is TEXT holding a Decimal, so no float ever rounds it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bot.errors import StoreError

if TYPE_CHECKING:
    from bot.database import Address

_BILLED_TRIES = "ALTER TABLE calls_in_flight ADD COLUMN billed_usd TEXT NOT NULL DEFAULT '0';"

MIGRATIONS: tuple[tuple[str, str], ...] = (
    (
        "Dialogues, their participants and turns, the calls in flight, and the model catalogue.",
        """
        CREATE TABLE dialogues (
            id                INTEGER PRIMARY KEY,
            origin            TEXT NOT NULL,
            status            TEXT NOT NULL,
            opening           TEXT NOT NULL,
            max_rounds        INTEGER NOT NULL,
            budget_usd        TEXT NOT NULL,
            max_total_tokens  INTEGER,
            max_seconds       REAL,
            created_at        TEXT NOT NULL,
            started_at        TEXT,
            ended_at          TEXT,
            stop_reason       TEXT,
            stop_detail       TEXT,
            spent_usd         TEXT NOT NULL DEFAULT '0',
            prompt_tokens     INTEGER NOT NULL DEFAULT 0,
            completion_tokens INTEGER NOT NULL DEFAULT 0,
            reasoning_tokens  INTEGER NOT NULL DEFAULT 0,
            interrupted_calls INTEGER NOT NULL DEFAULT 0
        );
        CREATE TABLE participants (
            dialogue_id      INTEGER NOT NULL REFERENCES dialogues(id) ON DELETE CASCADE,
            seat             INTEGER NOT NULL,
            name             TEXT NOT NULL,
            model            TEXT NOT NULL,
            system_prompt    TEXT NOT NULL,
            temperature      REAL,
            max_tokens       INTEGER,
            reasoning_effort TEXT,
            avatar_url       TEXT,
            PRIMARY KEY (dialogue_id, seat)
        );
        CREATE TABLE turns (
            dialogue_id       INTEGER NOT NULL REFERENCES dialogues(id) ON DELETE CASCADE,
            seq               INTEGER NOT NULL,
            round             INTEGER NOT NULL,
            seat              INTEGER NOT NULL,
            status            TEXT NOT NULL,
            text              TEXT NOT NULL,
            reasoning         TEXT NOT NULL,
            prompt_tokens     INTEGER NOT NULL,
            completion_tokens INTEGER NOT NULL,
            reasoning_tokens  INTEGER NOT NULL,
            cost_usd          TEXT NOT NULL,
            cost_source       TEXT NOT NULL,
            model_used        TEXT NOT NULL,
            provider          TEXT,
            generation_id     TEXT,
            finish_reason     TEXT,
            latency_ms        INTEGER NOT NULL,
            attempts          INTEGER NOT NULL,
            started_at        TEXT NOT NULL,
            ended_at          TEXT NOT NULL,
            PRIMARY KEY (dialogue_id, seq),
            FOREIGN KEY (dialogue_id, seat) REFERENCES participants(dialogue_id, seat)
        );
        -- A call that was sent but never settled (the process died): on resume it is charged at its
        -- reservation, so the budget stays a hard cap even across a crash.
        CREATE TABLE calls_in_flight (
            dialogue_id  INTEGER NOT NULL REFERENCES dialogues(id) ON DELETE CASCADE,
            seq          INTEGER NOT NULL,
            reserved_usd TEXT NOT NULL,
            started_at   TEXT NOT NULL,
            PRIMARY KEY (dialogue_id, seq)
        );
        CREATE TABLE models (
            source                TEXT NOT NULL,
            id                    TEXT NOT NULL,
            name                  TEXT NOT NULL,
            context_length        INTEGER,
            max_completion_tokens INTEGER,
            prompt_price          TEXT NOT NULL,
            completion_price      TEXT NOT NULL,
            request_price         TEXT NOT NULL,
            reasoning_price       TEXT NOT NULL,
            PRIMARY KEY (source, id)
        );
        CREATE TABLE catalogue_fetches (
            source     TEXT PRIMARY KEY,
            fetched_at TEXT NOT NULL
        );
        CREATE INDEX dialogues_by_status ON dialogues(status);
        """,
    ),
    (
        "The Discord bridge: where each dialogue is shown, per-guild limits, and bot bookkeeping.",
        """
        -- A room is a dialogue's place in a chat: its thread, who started it, and how far the
        -- posting got, so that a restart posts no turn twice and loses none.
        CREATE TABLE rooms (
            dialogue_id       INTEGER PRIMARY KEY REFERENCES dialogues(id) ON DELETE CASCADE,
            guild_id          INTEGER NOT NULL,
            channel_id        INTEGER NOT NULL,
            thread_id         INTEGER NOT NULL UNIQUE,
            starter_id        INTEGER NOT NULL,
            status_message_id INTEGER,
            posted_seq        INTEGER NOT NULL DEFAULT -1,
            posted_message_ids TEXT NOT NULL DEFAULT '',
            live_message_ids  TEXT NOT NULL DEFAULT ''
        );
        CREATE INDEX rooms_by_guild ON rooms(guild_id);
        -- NULL means "the deployment's default" for every column.
        CREATE TABLE guild_settings (
            guild_id         INTEGER PRIMARY KEY,
            allowed_models   TEXT,
            max_rounds       INTEGER,
            max_budget       TEXT,
            daily_cap_guild  TEXT,
            daily_cap_member TEXT,
            max_concurrent   INTEGER,
            reasoning        TEXT
        );
        CREATE TABLE bot_state (
            key   TEXT PRIMARY KEY,
            value TEXT NOT NULL
        );
        """,
    ),
    (
        "Participants on other providers: a named OpenAI-compatible server with optional prices, or a "
        "local model with its own chat format.",
        """
        ALTER TABLE participants ADD COLUMN provider TEXT;
        ALTER TABLE participants ADD COLUMN prompt_price TEXT;
        ALTER TABLE participants ADD COLUMN completion_price TEXT;
        ALTER TABLE participants ADD COLUMN chat_format TEXT;
        """,
    ),
    (
        "Long dialogues: prompt-cache tokens and savings per turn, cache prices in the catalogue, each "
        "dialogue's context and loop policies, and notes between turns (compactions, loops noticed).",
        """
        ALTER TABLE turns ADD COLUMN cached_tokens INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE turns ADD COLUMN cache_write_tokens INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE turns ADD COLUMN cache_saving_usd TEXT NOT NULL DEFAULT '0';
        ALTER TABLE models ADD COLUMN cache_read_price TEXT;
        ALTER TABLE models ADD COLUMN cache_write_price TEXT;
        ALTER TABLE dialogues ADD COLUMN context_policy TEXT NOT NULL DEFAULT 'stop';
        ALTER TABLE dialogues ADD COLUMN loop_action TEXT NOT NULL DEFAULT 'notify';
        ALTER TABLE dialogues ADD COLUMN summary_model TEXT;
        -- A note sits before turn `before_seq`. Context notes say from which turn the models see the
        -- history verbatim; a compaction also holds the summary that stands for the turns before.
        CREATE TABLE notes (
            id                INTEGER PRIMARY KEY,
            dialogue_id       INTEGER NOT NULL REFERENCES dialogues(id) ON DELETE CASCADE,
            before_seq        INTEGER NOT NULL,
            kind              TEXT NOT NULL,
            text              TEXT NOT NULL,
            first_kept_seq    INTEGER,
            model             TEXT,
            prompt_tokens     INTEGER NOT NULL DEFAULT 0,
            completion_tokens INTEGER NOT NULL DEFAULT 0,
            cost_usd          TEXT NOT NULL DEFAULT '0',
            created_at        TEXT NOT NULL
        );
        CREATE INDEX notes_by_dialogue ON notes(dialogue_id, before_seq);
        """,
    ),
    (
        "People in the dialogue: who wrote an interjection and which role may, and continuations and "
        "forks (the parent dialogue, how, and which of its turns were carried over); and the "
        "generation id of a call in flight, so a crash's lost call is charged what it really cost.",
        """
        ALTER TABLE notes ADD COLUMN author TEXT;
        ALTER TABLE guild_settings ADD COLUMN interject_role INTEGER;
        ALTER TABLE dialogues ADD COLUMN parent_id INTEGER REFERENCES dialogues(id) ON DELETE SET NULL;
        ALTER TABLE dialogues ADD COLUMN parent_kind TEXT;
        ALTER TABLE dialogues ADD COLUMN parent_turns INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE turns ADD COLUMN inherited INTEGER NOT NULL DEFAULT 0;
        CREATE INDEX dialogues_by_parent ON dialogues(parent_id);
        -- The provider's id for a call in flight: after a crash, what it cost can be asked for.
        ALTER TABLE calls_in_flight ADD COLUMN generation_id TEXT;
        -- The message asking a member for their turn, replaced (not repeated) after a restart.
        ALTER TABLE rooms ADD COLUMN asking_message_id INTEGER;
        """,
    ),
    (
        "One dialogue, one runner, across processes: a lease names the process that runs a dialogue "
        "and lapses unless renewed, so a second process is refused and a dead one's dialogue can be "
        "taken over (and only then are its calls in flight settled).",
        """
        CREATE TABLE leases (
            dialogue_id INTEGER PRIMARY KEY REFERENCES dialogues(id) ON DELETE CASCADE,
            owner       TEXT NOT NULL,
            taken_at    TEXT NOT NULL,
            renewed_at  TEXT NOT NULL,
            expires_at  TEXT NOT NULL
        );
        """,
    ),
    (
        "A server that reports no usage (llama.cpp's, among others): the turn's token counts were "
        "estimated, and the transcripts mark them so.",
        """
        ALTER TABLE turns ADD COLUMN usage_estimated INTEGER NOT NULL DEFAULT 0;
        """,
    ),
    (
        "Sampling that samples: each dialogue draws a seed (or is given one) that every call is "
        "sent, so a run can be repeated; dialogues from before have none.",
        """
        ALTER TABLE dialogues ADD COLUMN seed INTEGER;
        """,
    ),
    (
        "Spend reports count each call once: a fork or continuation carries its parent's notes (a "
        "summary's cost among them) as copies, marked here. A copy keeps its original time, older "
        "than the dialogue that holds it, which marks the copies made before this migration.",
        """
        ALTER TABLE notes ADD COLUMN inherited INTEGER NOT NULL DEFAULT 0;
        UPDATE notes SET inherited = 1
         WHERE created_at < (SELECT d.created_at FROM dialogues d WHERE d.id = notes.dialogue_id);
        """,
    ),
    (
        "Forgetting a member: an interjection records its author's id (names change and repeat); "
        "older ones carry only the name.",
        """
        ALTER TABLE notes ADD COLUMN author_id TEXT;
        """,
    ),
    (
        "A referee: a model that takes no turns but judges the dialogue at its end (and every few "
        "rounds when asked). Its verdicts are notes, paid like summaries.",
        """
        CREATE TABLE referees (
            dialogue_id      INTEGER PRIMARY KEY REFERENCES dialogues(id) ON DELETE CASCADE,
            every_rounds     INTEGER,
            name             TEXT NOT NULL,
            model            TEXT NOT NULL,
            system_prompt    TEXT NOT NULL DEFAULT '',
            temperature      REAL,
            max_tokens       INTEGER,
            reasoning_effort TEXT,
            avatar_url       TEXT,
            provider         TEXT,
            prompt_price     TEXT,
            completion_price TEXT,
            chat_format      TEXT
        );
        """,
    ),
    (
        "The audience's vote at a dialogue's end: the question and its answers, where it was posted, "
        "when it closes, and the tally once it has; and each server's choice of polls (NULL: the "
        "default).",
        """
        CREATE TABLE votes (
            dialogue_id INTEGER PRIMARY KEY REFERENCES dialogues(id) ON DELETE CASCADE,
            question    TEXT NOT NULL,
            answers     TEXT NOT NULL,
            channel_id  INTEGER,
            message_id  INTEGER,
            opened_at   TEXT NOT NULL,
            closes_at   TEXT NOT NULL,
            counts      TEXT,
            closed_at   TEXT
        );
        CREATE INDEX votes_open ON votes(closes_at) WHERE closed_at IS NULL;
        ALTER TABLE guild_settings ADD COLUMN polls INTEGER;
        ALTER TABLE guild_settings ADD COLUMN poll_question TEXT;
        ALTER TABLE guild_settings ADD COLUMN poll_hours INTEGER;
        """,
    ),
    (
        "Shows on a schedule: fixed voices, opening, rounds and budget, put on in a channel daily or "
        "weekly at a UTC time; `next_run_at` is the slot each waits for, and `disabled` says why "
        "one stopped (its channel or a voice is gone).",
        """
        CREATE TABLE schedules (
            id               INTEGER PRIMARY KEY,
            guild_id         INTEGER NOT NULL,
            channel_id       INTEGER NOT NULL,
            created_by       INTEGER NOT NULL,
            voices           TEXT NOT NULL,
            opening          TEXT NOT NULL,
            rounds           INTEGER NOT NULL,
            budget_usd       TEXT NOT NULL,
            cadence          TEXT NOT NULL,
            at_minute        INTEGER NOT NULL,
            weekday          INTEGER,
            referee          TEXT,
            next_run_at      TEXT NOT NULL,
            last_run_at      TEXT,
            last_dialogue_id INTEGER REFERENCES dialogues(id) ON DELETE SET NULL,
            disabled         TEXT,
            created_at       TEXT NOT NULL
        );
        CREATE INDEX schedules_due ON schedules(next_run_at) WHERE disabled IS NULL;
        CREATE INDEX schedules_by_guild ON schedules(guild_id);
        """,
    ),
    (
        "A thread's first message (the opening, or where a fork comes from) is recorded once posted, "
        "so a process that died between opening the thread and posting it has it posted on resume. "
        "Rooms from before posted theirs (0: posted, id not kept).",
        """
        ALTER TABLE rooms ADD COLUMN opening_message_id INTEGER;
        UPDATE rooms SET opening_message_id = 0;
        """,
    ),
    (
        "A stop, a pause or a member's words for their turn, asked of a dialogue another process "
        "runs, wait here until that process takes them (it looks every second), so any process can "
        "control any dialogue.",
        """
        CREATE TABLE asks (
            id          INTEGER PRIMARY KEY,
            dialogue_id INTEGER NOT NULL REFERENCES dialogues(id) ON DELETE CASCADE,
            action      TEXT NOT NULL CHECK (action IN ('stop', 'stop_now', 'pause', 'say')),
            text        TEXT,
            asked_at    TEXT NOT NULL,
            taken_at    TEXT
        );
        CREATE INDEX asks_waiting ON asks(dialogue_id) WHERE taken_at IS NULL;
        """,
    ),
    (
        "A call retried after a try that was billed (an empty reply, or a reply the provider took "
        "before it failed) keeps what those tries cost apart from the retry's reservation: after a "
        "crash the provider's record of the retry covers the retry alone, and both are charged.",
        _BILLED_TRIES,
    ),
)

SCHEMA_VERSION = len(MIGRATIONS)

# PostgreSQL came at version 15, so a PostgreSQL database starts there, from this one script: the
# schema the migrations above leave, in PostgreSQL's types. Discord's ids need BIGINT; REAL would
# be four bytes there, so floats are DOUBLE PRECISION. Money stays TEXT holding a Decimal, as in
# SQLite, so both give back the same digits. Times are ISO 8601 text compared byte by byte
# (COLLATE "C"), as SQLite compares them, whatever the server's locale.
# A migration after 15 is added to both: to MIGRATIONS and, in PostgreSQL's words, to
# POSTGRES_MIGRATIONS under the same version (tests/bot/test_store.py holds the two schemas equal).
POSTGRES_BASELINE = 15
POSTGRES_SCHEMA = """
CREATE TABLE dialogues (
    id                BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    origin            TEXT NOT NULL,
    status            TEXT NOT NULL,
    opening           TEXT NOT NULL,
    max_rounds        BIGINT NOT NULL,
    budget_usd        TEXT NOT NULL,
    max_total_tokens  BIGINT,
    max_seconds       DOUBLE PRECISION,
    created_at        TEXT COLLATE "C" NOT NULL,
    started_at        TEXT COLLATE "C",
    ended_at          TEXT COLLATE "C",
    stop_reason       TEXT,
    stop_detail       TEXT,
    spent_usd         TEXT NOT NULL DEFAULT '0',
    prompt_tokens     BIGINT NOT NULL DEFAULT 0,
    completion_tokens BIGINT NOT NULL DEFAULT 0,
    reasoning_tokens  BIGINT NOT NULL DEFAULT 0,
    interrupted_calls BIGINT NOT NULL DEFAULT 0,
    context_policy    TEXT NOT NULL DEFAULT 'stop',
    loop_action       TEXT NOT NULL DEFAULT 'notify',
    summary_model     TEXT,
    parent_id         BIGINT REFERENCES dialogues(id) ON DELETE SET NULL,
    parent_kind       TEXT,
    parent_turns      BIGINT NOT NULL DEFAULT 0,
    seed              BIGINT
);
CREATE INDEX dialogues_by_status ON dialogues(status);
CREATE INDEX dialogues_by_parent ON dialogues(parent_id);
CREATE TABLE participants (
    dialogue_id      BIGINT NOT NULL REFERENCES dialogues(id) ON DELETE CASCADE,
    seat             BIGINT NOT NULL,
    name             TEXT NOT NULL,
    model            TEXT NOT NULL,
    system_prompt    TEXT NOT NULL,
    temperature      DOUBLE PRECISION,
    max_tokens       BIGINT,
    reasoning_effort TEXT,
    avatar_url       TEXT,
    provider         TEXT,
    prompt_price     TEXT,
    completion_price TEXT,
    chat_format      TEXT,
    PRIMARY KEY (dialogue_id, seat)
);
CREATE TABLE turns (
    dialogue_id        BIGINT NOT NULL REFERENCES dialogues(id) ON DELETE CASCADE,
    seq                BIGINT NOT NULL,
    round              BIGINT NOT NULL,
    seat               BIGINT NOT NULL,
    status             TEXT NOT NULL,
    text               TEXT NOT NULL,
    reasoning          TEXT NOT NULL,
    prompt_tokens      BIGINT NOT NULL,
    completion_tokens  BIGINT NOT NULL,
    reasoning_tokens   BIGINT NOT NULL,
    cost_usd           TEXT NOT NULL,
    cost_source        TEXT NOT NULL,
    model_used         TEXT NOT NULL,
    provider           TEXT,
    generation_id      TEXT,
    finish_reason      TEXT,
    latency_ms         BIGINT NOT NULL,
    attempts           BIGINT NOT NULL,
    started_at         TEXT COLLATE "C" NOT NULL,
    ended_at           TEXT COLLATE "C" NOT NULL,
    cached_tokens      BIGINT NOT NULL DEFAULT 0,
    cache_write_tokens BIGINT NOT NULL DEFAULT 0,
    cache_saving_usd   TEXT NOT NULL DEFAULT '0',
    inherited          BIGINT NOT NULL DEFAULT 0,
    usage_estimated    BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (dialogue_id, seq),
    FOREIGN KEY (dialogue_id, seat) REFERENCES participants(dialogue_id, seat)
);
CREATE TABLE calls_in_flight (
    dialogue_id   BIGINT NOT NULL REFERENCES dialogues(id) ON DELETE CASCADE,
    seq           BIGINT NOT NULL,
    reserved_usd  TEXT NOT NULL,
    started_at    TEXT COLLATE "C" NOT NULL,
    generation_id TEXT,
    PRIMARY KEY (dialogue_id, seq)
);
CREATE TABLE models (
    source                TEXT NOT NULL,
    id                    TEXT NOT NULL,
    name                  TEXT NOT NULL,
    context_length        BIGINT,
    max_completion_tokens BIGINT,
    prompt_price          TEXT NOT NULL,
    completion_price      TEXT NOT NULL,
    request_price         TEXT NOT NULL,
    reasoning_price       TEXT NOT NULL,
    cache_read_price      TEXT,
    cache_write_price     TEXT,
    PRIMARY KEY (source, id)
);
CREATE TABLE catalogue_fetches (
    source     TEXT PRIMARY KEY,
    fetched_at TEXT COLLATE "C" NOT NULL
);
CREATE TABLE rooms (
    dialogue_id        BIGINT PRIMARY KEY REFERENCES dialogues(id) ON DELETE CASCADE,
    guild_id           BIGINT NOT NULL,
    channel_id         BIGINT NOT NULL,
    thread_id          BIGINT NOT NULL UNIQUE,
    starter_id         BIGINT NOT NULL,
    status_message_id  BIGINT,
    posted_seq         BIGINT NOT NULL DEFAULT -1,
    posted_message_ids TEXT NOT NULL DEFAULT '',
    live_message_ids   TEXT NOT NULL DEFAULT '',
    asking_message_id  BIGINT,
    opening_message_id BIGINT
);
CREATE INDEX rooms_by_guild ON rooms(guild_id);
CREATE TABLE guild_settings (
    guild_id         BIGINT PRIMARY KEY,
    allowed_models   TEXT,
    max_rounds       BIGINT,
    max_budget       TEXT,
    daily_cap_guild  TEXT,
    daily_cap_member TEXT,
    max_concurrent   BIGINT,
    reasoning        TEXT,
    interject_role   BIGINT,
    polls            BIGINT,
    poll_question    TEXT,
    poll_hours       BIGINT
);
CREATE TABLE bot_state (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE notes (
    id                BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    dialogue_id       BIGINT NOT NULL REFERENCES dialogues(id) ON DELETE CASCADE,
    before_seq        BIGINT NOT NULL,
    kind              TEXT NOT NULL,
    text              TEXT NOT NULL,
    first_kept_seq    BIGINT,
    model             TEXT,
    prompt_tokens     BIGINT NOT NULL DEFAULT 0,
    completion_tokens BIGINT NOT NULL DEFAULT 0,
    cost_usd          TEXT NOT NULL DEFAULT '0',
    created_at        TEXT COLLATE "C" NOT NULL,
    author            TEXT,
    inherited         BIGINT NOT NULL DEFAULT 0,
    author_id         TEXT
);
CREATE INDEX notes_by_dialogue ON notes(dialogue_id, before_seq);
CREATE TABLE leases (
    dialogue_id BIGINT PRIMARY KEY REFERENCES dialogues(id) ON DELETE CASCADE,
    owner       TEXT NOT NULL,
    taken_at    TEXT COLLATE "C" NOT NULL,
    renewed_at  TEXT COLLATE "C" NOT NULL,
    expires_at  TEXT COLLATE "C" NOT NULL
);
CREATE TABLE referees (
    dialogue_id      BIGINT PRIMARY KEY REFERENCES dialogues(id) ON DELETE CASCADE,
    every_rounds     BIGINT,
    name             TEXT NOT NULL,
    model            TEXT NOT NULL,
    system_prompt    TEXT NOT NULL DEFAULT '',
    temperature      DOUBLE PRECISION,
    max_tokens       BIGINT,
    reasoning_effort TEXT,
    avatar_url       TEXT,
    provider         TEXT,
    prompt_price     TEXT,
    completion_price TEXT,
    chat_format      TEXT
);
CREATE TABLE votes (
    dialogue_id BIGINT PRIMARY KEY REFERENCES dialogues(id) ON DELETE CASCADE,
    question    TEXT NOT NULL,
    answers     TEXT NOT NULL,
    channel_id  BIGINT,
    message_id  BIGINT,
    opened_at   TEXT COLLATE "C" NOT NULL,
    closes_at   TEXT COLLATE "C" NOT NULL,
    counts      TEXT,
    closed_at   TEXT COLLATE "C"
);
CREATE INDEX votes_open ON votes(closes_at) WHERE closed_at IS NULL;
CREATE TABLE schedules (
    id               BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    guild_id         BIGINT NOT NULL,
    channel_id       BIGINT NOT NULL,
    created_by       BIGINT NOT NULL,
    voices           TEXT NOT NULL,
    opening          TEXT NOT NULL,
    rounds           BIGINT NOT NULL,
    budget_usd       TEXT NOT NULL,
    cadence          TEXT NOT NULL,
    at_minute        BIGINT NOT NULL,
    weekday          BIGINT,
    referee          TEXT,
    next_run_at      TEXT COLLATE "C" NOT NULL,
    last_run_at      TEXT COLLATE "C",
    last_dialogue_id BIGINT REFERENCES dialogues(id) ON DELETE SET NULL,
    disabled         TEXT,
    created_at       TEXT COLLATE "C" NOT NULL
);
CREATE INDEX schedules_due ON schedules(next_run_at) WHERE disabled IS NULL;
CREATE INDEX schedules_by_guild ON schedules(guild_id);
CREATE TABLE asks (
    id          BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    dialogue_id BIGINT NOT NULL REFERENCES dialogues(id) ON DELETE CASCADE,
    action      TEXT NOT NULL CHECK (action IN ('stop', 'stop_now', 'pause', 'say')),
    text        TEXT,
    asked_at    TEXT COLLATE "C" NOT NULL,
    taken_at    TEXT COLLATE "C"
);
CREATE INDEX asks_waiting ON asks(dialogue_id) WHERE taken_at IS NULL;
"""
#: Migrations after POSTGRES_BASELINE, in PostgreSQL's words, by version.
POSTGRES_MIGRATIONS: dict[int, str] = {16: _BILLED_TRIES}


def refuse_newer(version: int, database: Address) -> None:
    """Raise StoreError if the database's schema is newer than this Voices knows: it is left as is."""
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"database {database} has schema {version}, newer than this Voices knows "
            f"({SCHEMA_VERSION}); upgrade Voices or {database.elsewhere}"
        )
