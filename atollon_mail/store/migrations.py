"""Numbered schema migrations, applied in order at start and by `atollon-mail db migrate`.

Each migration is frozen DDL written once for both backends: the few words SQLite and
PostgreSQL spell differently are placeholders filled per dialect. Models change; a
migration that already ran never does, so it must not be derived from the models.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import attrs
import peewee

from atollon_mail.store import message_addresses, searchindex, traffic
from atollon_mail.store.models import utc_now

_DIALECT_WORDS = {
    "sqlite": {"id": "INTEGER NOT NULL PRIMARY KEY", "bigint": "INTEGER", "blob": "BLOB"},
    "postgresql": {"id": "BIGSERIAL NOT NULL PRIMARY KEY", "bigint": "BIGINT", "blob": "BYTEA"},
}


@attrs.frozen
class Migration:
    number: int
    name: str
    statements: tuple[str, ...]
    # Run after `statements`, for one dialect only: where the two cannot share DDL at all
    # (SQLite cannot change a constraint without rebuilding its table).
    sqlite: tuple[str, ...] = ()
    postgresql: tuple[str, ...] = ()
    # Run last, in the same transaction, with the database and its dialect: what SQL
    # cannot compute for the rows already stored (addresses and text taken out of the
    # messages' bytes). It writes plain SQL, never the models.
    fill: Callable[[peewee.Database, str], object] | None = None


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "domains, users, contexts, mailboxes, aliases, messages, filings",
        (
            """CREATE TABLE domain (
                id {id},
                name VARCHAR(253) NOT NULL,
                mode VARCHAR(16) NOT NULL CHECK (mode IN ('primary', 'secondary')),
                active BOOLEAN NOT NULL,
                created_at TIMESTAMP NOT NULL)""",
            "CREATE UNIQUE INDEX domain_name ON domain (name)",
            """CREATE TABLE "user" (
                id {id},
                login VARCHAR(64) NOT NULL,
                name VARCHAR(200) NOT NULL,
                password_hash VARCHAR(200) NOT NULL,
                is_admin BOOLEAN NOT NULL,
                created_at TIMESTAMP NOT NULL)""",
            'CREATE UNIQUE INDEX user_login ON "user" (login)',
            """CREATE TABLE context (
                id {id},
                kind VARCHAR(16) NOT NULL CHECK (kind IN ('todo', 'folder', 'project')),
                name VARCHAR(200) NOT NULL,
                owner_id {bigint} REFERENCES "user" (id) ON DELETE RESTRICT,
                created_at TIMESTAMP NOT NULL)""",
            "CREATE INDEX context_owner_id ON context (owner_id)",
            """CREATE TABLE mailbox (
                id {id},
                local_part VARCHAR(64) NOT NULL,
                domain_id {bigint} NOT NULL REFERENCES domain (id) ON DELETE RESTRICT,
                owner_id {bigint} NOT NULL REFERENCES "user" (id) ON DELETE RESTRICT,
                identity VARCHAR(320) NOT NULL,
                store_to_id {bigint} REFERENCES context (id) ON DELETE RESTRICT,
                active BOOLEAN NOT NULL,
                is_default BOOLEAN NOT NULL,
                signature TEXT NOT NULL,
                next_uid {bigint} NOT NULL,
                created_at TIMESTAMP NOT NULL)""",
            "CREATE UNIQUE INDEX mailbox_domain_id_local_part ON mailbox (domain_id, local_part)",
            "CREATE INDEX mailbox_owner_id ON mailbox (owner_id)",
            """CREATE TABLE alias (
                id {id},
                name VARCHAR(64) NOT NULL,
                domain_id {bigint} NOT NULL REFERENCES domain (id) ON DELETE RESTRICT,
                mailbox_id {bigint} NOT NULL REFERENCES mailbox (id) ON DELETE CASCADE,
                created_at TIMESTAMP NOT NULL)""",
            "CREATE UNIQUE INDEX alias_domain_id_name ON alias (domain_id, name)",
            "CREATE INDEX alias_mailbox_id ON alias (mailbox_id)",
            """CREATE TABLE message (
                id {id},
                raw {blob} NOT NULL,
                size {bigint} NOT NULL,
                message_id VARCHAR(998),
                subject TEXT,
                from_header TEXT,
                date_header VARCHAR(200),
                envelope_sender VARCHAR(320) NOT NULL,
                received_at TIMESTAMP NOT NULL)""",
            """CREATE TABLE filing (
                id {id},
                message_id {bigint} NOT NULL REFERENCES message (id) ON DELETE CASCADE,
                mailbox_id {bigint} NOT NULL REFERENCES mailbox (id) ON DELETE CASCADE,
                context_id {bigint} NOT NULL REFERENCES context (id) ON DELETE RESTRICT,
                uid {bigint} NOT NULL,
                flags VARCHAR(200) NOT NULL,
                filed_at TIMESTAMP NOT NULL)""",
            "CREATE UNIQUE INDEX filing_mailbox_id_uid ON filing (mailbox_id, uid)",
            "CREATE INDEX filing_message_id ON filing (message_id)",
            "CREATE INDEX filing_context_id ON filing (context_id)",
        ),
    ),
    Migration(
        2,
        "outbound queue, delivery timeline, DKIM keys, Sent contexts",
        (
            """CREATE TABLE queue_message (
                id {id},
                message_id {bigint} NOT NULL REFERENCES message (id) ON DELETE RESTRICT,
                envelope_sender VARCHAR(320) NOT NULL,
                is_bounce BOOLEAN NOT NULL,
                origin_mailbox_id {bigint} REFERENCES mailbox (id) ON DELETE SET NULL,
                created_at TIMESTAMP NOT NULL)""",
            "CREATE INDEX queue_message_message_id ON queue_message (message_id)",
            """CREATE TABLE queue_recipient (
                id {id},
                queue_message_id {bigint} NOT NULL
                    REFERENCES queue_message (id) ON DELETE CASCADE,
                address VARCHAR(320) NOT NULL,
                domain VARCHAR(253) NOT NULL,
                state VARCHAR(16) NOT NULL CHECK (state IN
                    ('queued', 'in-flight', 'deferred', 'delivered', 'bounced')),
                attempts INTEGER NOT NULL,
                next_attempt_at TIMESTAMP NOT NULL,
                last_attempt_at TIMESTAMP,
                last_reply TEXT,
                delay_warned BOOLEAN NOT NULL,
                created_at TIMESTAMP NOT NULL,
                updated_at TIMESTAMP NOT NULL)""",
            "CREATE INDEX queue_recipient_state_next ON queue_recipient (state, next_attempt_at)",
            "CREATE INDEX queue_recipient_queue_message_id ON queue_recipient (queue_message_id)",
            """CREATE TABLE queue_event (
                id {id},
                queue_recipient_id {bigint} NOT NULL
                    REFERENCES queue_recipient (id) ON DELETE CASCADE,
                at TIMESTAMP NOT NULL,
                server VARCHAR(300),
                reply TEXT,
                outcome VARCHAR(16) NOT NULL,
                next_attempt_at TIMESTAMP)""",
            "CREATE INDEX queue_event_queue_recipient_id ON queue_event (queue_recipient_id)",
            """CREATE TABLE dkim_key (
                id {id},
                domain_id {bigint} NOT NULL REFERENCES domain (id) ON DELETE CASCADE,
                selector VARCHAR(63) NOT NULL,
                algorithm VARCHAR(16) NOT NULL CHECK (algorithm IN ('rsa', 'ed25519')),
                private_key TEXT NOT NULL,
                public_key TEXT NOT NULL,
                active BOOLEAN NOT NULL,
                created_at TIMESTAMP NOT NULL)""",
            "CREATE UNIQUE INDEX dkim_key_domain_id_selector ON dkim_key (domain_id, selector)",
            "ALTER TABLE mailbox ADD COLUMN sent_context_id {bigint}"
            " REFERENCES context (id) ON DELETE SET NULL",
        ),
    ),
    Migration(
        3,
        "message types, access rights, auto-respond, forwarding, primary domains, DNS checks",
        (
            """CREATE TABLE message_type (
                id {id},
                name VARCHAR(100) NOT NULL,
                code VARCHAR(32) NOT NULL,
                description TEXT NOT NULL,
                active BOOLEAN NOT NULL,
                default_incoming BOOLEAN NOT NULL,
                default_outgoing BOOLEAN NOT NULL,
                created_at TIMESTAMP NOT NULL)""",
            "CREATE UNIQUE INDEX message_type_code ON message_type (code)",
            """INSERT INTO message_type
                (name, code, description, active, default_incoming, default_outgoing, created_at)
                VALUES ('Incoming e-mail', 'email-in', 'Mail received from outside', TRUE,
                        TRUE, FALSE, CURRENT_TIMESTAMP)""",
            """INSERT INTO message_type
                (name, code, description, active, default_incoming, default_outgoing, created_at)
                VALUES ('Outgoing e-mail', 'email-out', 'Mail sent by our users', TRUE,
                        FALSE, TRUE, CURRENT_TIMESTAMP)""",
            "ALTER TABLE message ADD COLUMN type_id {bigint}"
            " REFERENCES message_type (id) ON DELETE RESTRICT",
            # Existing mail: what was queued or filed in a Sent folder went out, the rest came in.
            """UPDATE message SET type_id = (SELECT id FROM message_type WHERE code = 'email-out')
                WHERE id IN (SELECT message_id FROM queue_message)
                   OR id IN (SELECT f.message_id FROM filing f
                             JOIN mailbox m ON m.sent_context_id = f.context_id)""",
            """UPDATE message SET type_id = (SELECT id FROM message_type WHERE code = 'email-in')
                WHERE type_id IS NULL""",
            "CREATE INDEX message_type_id ON message (type_id)",
            """CREATE TABLE mailbox_access (
                id {id},
                mailbox_id {bigint} NOT NULL REFERENCES mailbox (id) ON DELETE CASCADE,
                user_id {bigint} NOT NULL REFERENCES "user" (id) ON DELETE CASCADE,
                can_view BOOLEAN NOT NULL,
                can_edit BOOLEAN NOT NULL,
                created_at TIMESTAMP NOT NULL)""",
            "CREATE UNIQUE INDEX mailbox_access_mailbox_user"
            " ON mailbox_access (mailbox_id, user_id)",
            "CREATE INDEX mailbox_access_user_id ON mailbox_access (user_id)",
            """CREATE TABLE autoresponder (
                id {id},
                mailbox_id {bigint} NOT NULL REFERENCES mailbox (id) ON DELETE CASCADE,
                enabled BOOLEAN NOT NULL,
                subject VARCHAR(998) NOT NULL,
                body TEXT NOT NULL,
                starts_at TIMESTAMP,
                ends_at TIMESTAMP,
                interval_days INTEGER NOT NULL,
                updated_at TIMESTAMP NOT NULL)""",
            "CREATE UNIQUE INDEX autoresponder_mailbox_id ON autoresponder (mailbox_id)",
            """CREATE TABLE autoresponse_log (
                id {id},
                mailbox_id {bigint} NOT NULL REFERENCES mailbox (id) ON DELETE CASCADE,
                correspondent VARCHAR(320) NOT NULL,
                sent_at TIMESTAMP NOT NULL)""",
            "CREATE UNIQUE INDEX autoresponse_log_mailbox_correspondent"
            " ON autoresponse_log (mailbox_id, correspondent)",
            "ALTER TABLE mailbox ADD COLUMN forward_enabled BOOLEAN NOT NULL DEFAULT FALSE",
            "ALTER TABLE mailbox ADD COLUMN forward_keep_copy BOOLEAN NOT NULL DEFAULT TRUE",
            """CREATE TABLE forward_target (
                id {id},
                mailbox_id {bigint} NOT NULL REFERENCES mailbox (id) ON DELETE CASCADE,
                address VARCHAR(320) NOT NULL,
                created_at TIMESTAMP NOT NULL)""",
            "CREATE UNIQUE INDEX forward_target_mailbox_address"
            " ON forward_target (mailbox_id, address)",
            "ALTER TABLE domain ADD COLUMN primary_domain_id {bigint}"
            " REFERENCES domain (id) ON DELETE RESTRICT",
            """CREATE TABLE dns_check (
                id {id},
                domain_id {bigint} NOT NULL REFERENCES domain (id) ON DELETE CASCADE,
                checked_at TIMESTAMP NOT NULL,
                results TEXT NOT NULL)""",
            "CREATE UNIQUE INDEX dns_check_domain_id ON dns_check (domain_id)",
        ),
    ),
    Migration(
        4,
        "CRM contacts, folders, default folders, distribution groups, campaigns",
        (
            """CREATE TABLE organization (
                id {id},
                name VARCHAR(200) NOT NULL,
                created_at TIMESTAMP NOT NULL)""",
            "CREATE UNIQUE INDEX organization_name ON organization (name)",
            """CREATE TABLE contact (
                id {id},
                organization_id {bigint} NOT NULL REFERENCES organization (id) ON DELETE RESTRICT,
                kind VARCHAR(16) NOT NULL CHECK (kind IN ('person', 'company')),
                external_id VARCHAR(100),
                name VARCHAR(200) NOT NULL,
                first_name VARCHAR(100) NOT NULL,
                last_name VARCHAR(100) NOT NULL,
                email VARCHAR(320) NOT NULL,
                language VARCHAR(8) NOT NULL,
                created_at TIMESTAMP NOT NULL,
                updated_at TIMESTAMP NOT NULL)""",
            "CREATE UNIQUE INDEX contact_organization_external_id"
            " ON contact (organization_id, external_id)",
            "CREATE INDEX contact_organization_language ON contact (organization_id, language)",
            "CREATE INDEX contact_email ON contact (email)",
            """CREATE TABLE employment (
                id {id},
                person_id {bigint} NOT NULL REFERENCES contact (id) ON DELETE CASCADE,
                company_id {bigint} NOT NULL REFERENCES contact (id) ON DELETE CASCADE,
                is_primary BOOLEAN NOT NULL,
                valid_from DATE,
                valid_to DATE,
                created_at TIMESTAMP NOT NULL)""",
            "CREATE INDEX employment_person_id ON employment (person_id)",
            "CREATE INDEX employment_company_id ON employment (company_id)",
            "ALTER TABLE context ADD COLUMN organization_id {bigint}"
            " REFERENCES organization (id) ON DELETE RESTRICT",
            "ALTER TABLE context ADD COLUMN company_id {bigint}"
            " REFERENCES contact (id) ON DELETE RESTRICT",
            "CREATE INDEX context_organization_id ON context (organization_id)",
            "CREATE INDEX context_company_id ON context (company_id)",
            """CREATE TABLE contact_context (
                id {id},
                organization_id {bigint} NOT NULL REFERENCES organization (id) ON DELETE CASCADE,
                contact_id {bigint} NOT NULL REFERENCES contact (id) ON DELETE CASCADE,
                folder_id {bigint} REFERENCES context (id) ON DELETE SET NULL,
                project_id {bigint} REFERENCES context (id) ON DELETE SET NULL,
                activity VARCHAR(200),
                source VARCHAR(16) NOT NULL CHECK (source IN ('manual', 'employer')),
                updated_at TIMESTAMP NOT NULL)""",
            "CREATE UNIQUE INDEX contact_context_organization_contact"
            " ON contact_context (organization_id, contact_id)",
            "CREATE INDEX contact_context_contact_id ON contact_context (contact_id)",
            """CREATE TABLE distribution_group (
                id {id},
                name VARCHAR(200) NOT NULL,
                organization_id {bigint} REFERENCES organization (id) ON DELETE RESTRICT,
                kind VARCHAR(16) NOT NULL CHECK (kind IN ('static', 'dynamic')),
                filter TEXT,
                created_at TIMESTAMP NOT NULL)""",
            "CREATE UNIQUE INDEX distribution_group_name ON distribution_group (name)",
            "CREATE INDEX distribution_group_organization_id"
            " ON distribution_group (organization_id)",
            """CREATE TABLE group_member (
                id {id},
                group_id {bigint} NOT NULL REFERENCES distribution_group (id) ON DELETE CASCADE,
                contact_id {bigint} NOT NULL REFERENCES contact (id) ON DELETE CASCADE,
                added_at TIMESTAMP NOT NULL)""",
            "CREATE UNIQUE INDEX group_member_group_contact ON group_member (group_id, contact_id)",
            "CREATE INDEX group_member_contact_id ON group_member (contact_id)",
            """CREATE TABLE campaign (
                id {id},
                name VARCHAR(200) NOT NULL,
                group_id {bigint} NOT NULL REFERENCES distribution_group (id) ON DELETE RESTRICT,
                mailbox_id {bigint} NOT NULL REFERENCES mailbox (id) ON DELETE RESTRICT,
                type_id {bigint} REFERENCES message_type (id) ON DELETE RESTRICT,
                organization_id {bigint} REFERENCES organization (id) ON DELETE RESTRICT,
                fallback_language VARCHAR(8) NOT NULL,
                status VARCHAR(16) NOT NULL CHECK (status IN
                    ('draft', 'running', 'paused', 'cancelled', 'finished')),
                created_at TIMESTAMP NOT NULL,
                started_at TIMESTAMP,
                finished_at TIMESTAMP,
                updated_at TIMESTAMP NOT NULL)""",
            "CREATE INDEX campaign_status ON campaign (status)",
            "CREATE INDEX campaign_group_id ON campaign (group_id)",
            "CREATE INDEX campaign_mailbox_id ON campaign (mailbox_id)",
            "CREATE INDEX campaign_type_id ON campaign (type_id)",
            "CREATE INDEX campaign_organization_id ON campaign (organization_id)",
            """CREATE TABLE campaign_variant (
                id {id},
                campaign_id {bigint} NOT NULL REFERENCES campaign (id) ON DELETE CASCADE,
                language VARCHAR(8) NOT NULL,
                subject TEXT NOT NULL,
                body TEXT NOT NULL,
                updated_at TIMESTAMP NOT NULL)""",
            "CREATE UNIQUE INDEX campaign_variant_campaign_language"
            " ON campaign_variant (campaign_id, language)",
            # queue_recipient_id and message_id are plain numbers, not references: the
            # queue's rows come and go (pause takes them back, `queue delete` removes them)
            # while the send list keeps its history.
            """CREATE TABLE campaign_recipient (
                id {id},
                campaign_id {bigint} NOT NULL REFERENCES campaign (id) ON DELETE CASCADE,
                contact_id {bigint} REFERENCES contact (id) ON DELETE SET NULL,
                address VARCHAR(320) NOT NULL,
                language VARCHAR(8) NOT NULL,
                state VARCHAR(16) NOT NULL CHECK (state IN ('queued', 'sending', 'sent',
                    'deferred', 'bounced', 'failed', 'suppressed')),
                uncertain BOOLEAN NOT NULL,
                attempts INTEGER NOT NULL,
                last_reply TEXT,
                queue_recipient_id {bigint},
                message_id {bigint},
                sent_at TIMESTAMP,
                updated_at TIMESTAMP NOT NULL)""",
            "CREATE UNIQUE INDEX campaign_recipient_campaign_address"
            " ON campaign_recipient (campaign_id, address)",
            "CREATE INDEX campaign_recipient_campaign_state_id"
            " ON campaign_recipient (campaign_id, state, id)",
            # The rate of `massmail status`: rows finished in the last minute, by state.
            "CREATE INDEX campaign_recipient_campaign_state_updated"
            " ON campaign_recipient (campaign_id, state, updated_at)",
            "CREATE INDEX campaign_recipient_contact_id ON campaign_recipient (contact_id)",
            """CREATE TABLE suppression (
                id {id},
                address VARCHAR(320) NOT NULL,
                reason VARCHAR(16) NOT NULL CHECK (reason IN
                    ('unsubscribed', 'hard-bounce', 'manual')),
                detail TEXT,
                campaign_id {bigint} REFERENCES campaign (id) ON DELETE SET NULL,
                created_at TIMESTAMP NOT NULL)""",
            "CREATE UNIQUE INDEX suppression_address ON suppression (address)",
            "CREATE INDEX suppression_campaign_id ON suppression (campaign_id)",
            "ALTER TABLE queue_recipient ADD COLUMN campaign_recipient_id {bigint}",
        ),
    ),
    Migration(
        5,
        "DKIM key rotation: when a key stopped signing",
        # A key is active (signs), pending (generated beside an active key of its
        # algorithm, waiting for `dkim activate`) or retired (replaced at retired_at, kept
        # published for a while, then removed).
        ("ALTER TABLE dkim_key ADD COLUMN retired_at TIMESTAMP",),
    ),
    Migration(
        6,
        "sending identities approved by an administrator",
        (
            # Every identity stored before starts unapproved: one that is not the mailbox's
            # own address is refused at submission until an administrator sets it again.
            "ALTER TABLE mailbox ADD COLUMN identity_approved BOOLEAN NOT NULL DEFAULT FALSE",
        ),
    ),
    Migration(
        7,
        "when a delivery's final dot was sent; recipients that may have got two copies",
        (
            # Set (and committed) just before the final "." of an attempt is written,
            # cleared when the reply is recorded: at a restart, an in-flight recipient
            # with it set may have been delivered already.
            "ALTER TABLE queue_recipient ADD COLUMN dot_sent_at TIMESTAMP",
            "ALTER TABLE queue_recipient ADD COLUMN uncertain BOOLEAN NOT NULL DEFAULT FALSE",
            # Few rows are ever uncertain: `queue list --uncertain` reads only those.
            "CREATE INDEX queue_recipient_uncertain ON queue_recipient (id) WHERE uncertain",
        ),
    ),
    Migration(
        8,
        "the producer of each queued message, in place of the campaign link",
        (
            # The queue names no producer: a queued message records its origin's kind and
            # row, and the hooks of that kind hear of its outcomes (store.origins).
            "ALTER TABLE queue_message ADD COLUMN origin_kind VARCHAR(16)",
            "ALTER TABLE queue_message ADD COLUMN origin_id {bigint}",
            # Campaign mail carries its send-list row over (one recipient per message);
            # the producer of the other mail queued before this was never recorded.
            """UPDATE queue_message SET origin_kind = 'campaign', origin_id =
                (SELECT MIN(r.campaign_recipient_id) FROM queue_recipient r
                 WHERE r.queue_message_id = queue_message.id)
                WHERE id IN (SELECT queue_message_id FROM queue_recipient
                             WHERE campaign_recipient_id IS NOT NULL)""",
            "ALTER TABLE queue_recipient DROP COLUMN campaign_recipient_id",
        ),
    ),
    Migration(
        9,
        "inbound verdicts kept with messages, spam handling per mailbox, the Junk folder",
        (
            # records.InboundVerdict as JSON: what the inbound checks said (None: nothing
            # checked it).
            "ALTER TABLE message ADD COLUMN verdict TEXT",
            "ALTER TABLE mailbox ADD COLUMN spam_handling VARCHAR(8) NOT NULL DEFAULT 'junk'"
            " CHECK (spam_handling IN ('junk', 'tag', 'off'))",
            # Everything filed so far lies in the inbox.
            "ALTER TABLE filing ADD COLUMN folder VARCHAR(8) NOT NULL DEFAULT 'inbox'"
            " CHECK (folder IN ('inbox', 'junk'))",
            # Junk by mailbox (its listing) and by age (the purge); the inbox, where nearly
            # all mail is filed, pays nothing for these.
            "CREATE INDEX filing_junk_mailbox_uid ON filing (mailbox_id, uid)"
            " WHERE folder = 'junk'",
            "CREATE INDEX filing_junk_filed_at ON filing (filed_at) WHERE folder = 'junk'",
        ),
    ),
    Migration(
        10,
        "Drafts and Trash folders in every mailbox",
        (),
        sqlite=(
            # SQLite keeps a column's CHECK in the table's definition: the table is made
            # again with the wider one (nothing references filing, so nothing else moves).
            """CREATE TABLE filing_new (
                id INTEGER NOT NULL PRIMARY KEY,
                message_id INTEGER NOT NULL REFERENCES message (id) ON DELETE CASCADE,
                mailbox_id INTEGER NOT NULL REFERENCES mailbox (id) ON DELETE CASCADE,
                context_id INTEGER NOT NULL REFERENCES context (id) ON DELETE RESTRICT,
                uid INTEGER NOT NULL,
                flags VARCHAR(200) NOT NULL,
                filed_at TIMESTAMP NOT NULL,
                folder VARCHAR(8) NOT NULL DEFAULT 'inbox'
                    CHECK (folder IN ('inbox', 'junk', 'drafts', 'trash')))""",
            """INSERT INTO filing_new (id, message_id, mailbox_id, context_id, uid, flags,
                                       filed_at, folder)
                SELECT id, message_id, mailbox_id, context_id, uid, flags, filed_at, folder
                FROM filing""",
            "DROP TABLE filing",
            "ALTER TABLE filing_new RENAME TO filing",
            "CREATE UNIQUE INDEX filing_mailbox_id_uid ON filing (mailbox_id, uid)",
            "CREATE INDEX filing_message_id ON filing (message_id)",
            "CREATE INDEX filing_context_id ON filing (context_id)",
            "CREATE INDEX filing_junk_mailbox_uid ON filing (mailbox_id, uid)"
            " WHERE folder = 'junk'",
            "CREATE INDEX filing_junk_filed_at ON filing (filed_at) WHERE folder = 'junk'",
        ),
        postgresql=(
            "ALTER TABLE filing DROP CONSTRAINT filing_folder_check",
            "ALTER TABLE filing ADD CONSTRAINT filing_folder_check"
            " CHECK (folder IN ('inbox', 'junk', 'drafts', 'trash'))",
        ),
    ),
    Migration(
        11,
        "the addresses each message is from and to",
        (
            """CREATE TABLE message_address (
                id {id},
                message_id {bigint} NOT NULL REFERENCES message (id) ON DELETE CASCADE,
                address VARCHAR(320) NOT NULL,
                role VARCHAR(4) NOT NULL CHECK (role IN ('from', 'to')))""",
            "CREATE INDEX message_address_message_id ON message_address (message_id)",
            "CREATE INDEX message_address_address_message_id"
            " ON message_address (address, message_id)",
        ),
        fill=message_addresses.backfill,
    ),
    Migration(
        12,
        "the mail client's folder counts and Trash read by index",
        (
            # Totals and unread per folder and context of a mailbox, from the index alone
            # (the flags are in it): no pass over the table's rows.
            "CREATE INDEX filing_mailbox_folder_context_flags"
            " ON filing (mailbox_id, folder, context_id, flags)",
            # Trash by mailbox, newest first, as Junk is: the inbox pays nothing for it.
            "CREATE INDEX filing_trash_mailbox_uid ON filing (mailbox_id, uid)"
            " WHERE folder = 'trash'",
        ),
    ),
    Migration(
        13,
        "full-text search of messages; whether a message has an attachment",
        ("ALTER TABLE message ADD COLUMN has_attachment BOOLEAN NOT NULL DEFAULT FALSE",),
        sqlite=(
            # FTS5, its rowid the message's id. Not contentless: SQLite before 3.43 cannot
            # delete a row of a contentless table without its original text, so the text
            # (at most searchtext.BODY_TEXT_LIMIT of body a message) is kept by FTS5.
            # No column sizes: they serve ranking by relevance, and results come newest first.
            "CREATE VIRTUAL TABLE message_search USING fts5("
            "subject, sender, recipients, body, tokenize = 'unicode61 remove_diacritics 2',"
            " columnsize = 0)",
            # Whoever deletes a message deletes its words with it.
            "CREATE TRIGGER message_search_forget AFTER DELETE ON message"
            " BEGIN DELETE FROM message_search WHERE rowid = old.id; END",
        ),
        postgresql=(
            # One tsvector a message: subject weighted A, From B, To and Cc C, the body D
            # (the weights let a query ask for a word in one field). The 'simple'
            # configuration: mail here mixes languages, and one language's stemmer or
            # stop words would mangle or drop the words of the others.
            """CREATE TABLE message_search (
                message_id BIGINT NOT NULL PRIMARY KEY
                    REFERENCES message (id) ON DELETE CASCADE,
                document TSVECTOR NOT NULL)""",
            "CREATE INDEX message_search_document ON message_search USING GIN (document)",
        ),
        fill=searchindex.backfill,
    ),
    Migration(
        14,
        "each filing's mod-sequence, for IMAP's CONDSTORE",
        (
            # Set from the mailbox's uid counter whenever the filing's flags change; NULL
            # (its uid stands for it) until then, so filing new mail writes nothing more.
            "ALTER TABLE filing ADD COLUMN modseq {bigint}",
        ),
    ),
    Migration(
        15,
        "what IMAP renders and searches of each message's header, kept once computed",
        (
            # Written by the IMAP server the first time it reads a message's header (never
            # by the inbound path), read instead of the header from then on. `version` is
            # the rendering's: rows of another version count as absent. The header fields
            # are the decoded, case-folded values of every such field joined by newlines
            # (NULL: no such field).
            """CREATE TABLE imap_summary (
                message_id {bigint} NOT NULL PRIMARY KEY
                    REFERENCES message (id) ON DELETE CASCADE,
                version INTEGER NOT NULL,
                envelope {blob} NOT NULL,
                subject TEXT NULL,
                from_field TEXT NULL,
                to_field TEXT NULL,
                cc_field TEXT NULL,
                bcc_field TEXT NULL)""",
        ),
    ),
    Migration(
        16,
        "mail traffic counted per hour for the dashboard",
        (
            # Added to once per committed batch by the intake and the delivery runner
            # (store.traffic); each store thread writes its own shard of an hour, so
            # concurrent writers never wait on one row. Read by hour range only.
            """CREATE TABLE traffic_hour (
                id {id},
                hour TIMESTAMP NOT NULL,
                shard INTEGER NOT NULL,
                received {bigint} NOT NULL,
                sent {bigint} NOT NULL,
                bounced {bigint} NOT NULL,
                junk {bigint} NOT NULL)""",
            "CREATE UNIQUE INDEX traffic_hour_hour_shard ON traffic_hour (hour, shard)",
        ),
        fill=traffic.backfill,
    ),
    Migration(
        17,
        "several nodes on one database: who claimed each delivery, web sessions",
        (
            # The node whose runner claimed an in-flight recipient (NULL: claimed before
            # this migration, or by a single box): a node starting again requeues only its
            # own claims, and the claims of a node that died are released by the others.
            "ALTER TABLE queue_recipient ADD COLUMN claimed_by VARCHAR(200) NULL",
            # Web sessions, shared by every node's web service. Only a SHA-256 of the
            # token is kept: a read of the table gives no one a live session.
            """CREATE TABLE web_session (
                id {id},
                token_hash VARCHAR(64) NOT NULL,
                user_id {bigint} NOT NULL REFERENCES "user" (id) ON DELETE CASCADE,
                csrf_token VARCHAR(100) NOT NULL,
                created_at TIMESTAMP NOT NULL,
                last_seen TIMESTAMP NOT NULL)""",
            "CREATE UNIQUE INDEX web_session_token_hash ON web_session (token_hash)",
            "CREATE INDEX web_session_last_seen ON web_session (last_seen)",
        ),
    ),
    Migration(
        18,
        "the queue's waiting recipients in the order they were queued, for the dashboard",
        (
            # The dashboard's oldest waiting recipient is the first entry of one state, and
            # its problems per domain read the longest-waiting deferred ones in this order:
            # a few rows each, where sorting every waiting row took seconds at a million.
            "CREATE INDEX queue_recipient_state_created ON queue_recipient (state, created_at, id)",
        ),
    ),
    Migration(
        19,
        "a web session's pending confirmation, for whichever node shows the next page",
        (
            # The page it is for (flash_for) and its text: set by a POST, read and cleared
            # by the GET its redirect leads to, which may reach another node.
            "ALTER TABLE web_session ADD COLUMN flash_for VARCHAR(400) NULL",
            "ALTER TABLE web_session ADD COLUMN flash TEXT NULL",
        ),
    ),
)

LATEST_VERSION = MIGRATIONS[-1].number


def dialect_of(database: peewee.Database) -> str:
    if isinstance(database, peewee.PostgresqlDatabase):
        return "postgresql"
    if isinstance(database, peewee.SqliteDatabase):
        return "sqlite"
    raise ValueError(f"unsupported database {type(database).__name__}")


def _ensure_version_table(database: peewee.Database) -> None:
    database.execute_sql(
        "CREATE TABLE IF NOT EXISTS schema_migration ("
        " version INTEGER NOT NULL PRIMARY KEY,"
        " name VARCHAR(200) NOT NULL,"
        " applied_at TIMESTAMP NOT NULL)"
    )


def applied_versions(database: peewee.Database) -> list[int]:
    _ensure_version_table(database)
    cursor = database.execute_sql("SELECT version FROM schema_migration ORDER BY version")
    return [row[0] for row in cursor.fetchall()]


def schema_versions(database: peewee.Database) -> list[int]:
    # Only read: a database that is not migrated is left exactly as it was found.
    if not database.table_exists("schema_migration"):
        return []
    return applied_versions(database)


# Any fixed number: every migrator on the same PostgreSQL database takes this lock.
_POSTGRES_LOCK_KEY = 0x61746F6C  # "atol"


@contextlib.contextmanager
def _migration_transaction(database: peewee.Database):
    """A transaction that only one migrator holds at a time.

    PostgreSQL: an advisory lock released at commit. SQLite: BEGIN IMMEDIATE (the write
    lock). Whatever is read after it is current, so two processes starting together apply
    each migration once.
    """
    if dialect_of(database) == "sqlite":
        transaction = database.atomic("IMMEDIATE")
    else:
        transaction = database.atomic()
    with transaction:
        if dialect_of(database) == "postgresql":
            database.execute_sql(f"SELECT pg_advisory_xact_lock({_POSTGRES_LOCK_KEY})")
        yield


def _refuse_newer(done: set[int]) -> None:
    if done and max(done) > LATEST_VERSION:
        raise RuntimeError(
            f"the database is at schema version {max(done)}, newer than this program "
            f"knows ({LATEST_VERSION}); run a newer atollon-mail"
        )


def migrate(database: peewee.Database, up_to: int | None = None) -> list[Migration]:
    """Apply every migration not yet applied (up to number `up_to`, if given), each in
    its own transaction; return them."""
    words = _DIALECT_WORDS[dialect_of(database)]
    with _migration_transaction(database):
        done = set(applied_versions(database))
    _refuse_newer(done)
    applied = []
    for migration in MIGRATIONS:
        if migration.number in done:
            continue
        if up_to is not None and migration.number > up_to:
            break
        with _migration_transaction(database):
            # Another migrator may have applied it while we waited for the lock.
            if migration.number in applied_versions(database):
                continue
            dialect_only = getattr(migration, dialect_of(database))
            for statement in migration.statements + dialect_only:
                database.execute_sql(statement.format(**words))
            if migration.fill is not None:
                migration.fill(database, dialect_of(database))
            placeholders = ", ".join([database.param] * 3)
            database.execute_sql(
                f"INSERT INTO schema_migration (version, name, applied_at) VALUES ({placeholders})",
                (migration.number, migration.name, utc_now()),
            )
        applied.append(migration)
    return applied
