-- 007_email_tokens: email verification, password reset, the mail outbox.
--
-- One-time tokens ("cmo_" + 43 base62, 256 random bits) are stored as the
-- lowercase hex SHA-256 of the whole token, like refresh tokens.  A token
-- is consumed by one UPDATE ... WHERE used_at IS NULL AND expires_at > now()
-- RETURNING, so two concurrent uses cannot both succeed.
--
-- Mail is never sent by nginx: the module writes the token row and an
-- outbox row in the same statement, and `cinematch mailer` sends the
-- outbox over SMTP, then clears the secret from the row.  The outbox holds
-- the plain token only until it is sent (or given up on); the table is
-- readable by whoever can read the database, which can mint sessions
-- anyway.

ALTER TABLE users ADD COLUMN email_verified_at timestamptz;

CREATE TABLE user_tokens (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id         bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    purpose         text NOT NULL
                    CONSTRAINT user_tokens_purpose_check
                    CHECK (purpose IN ('verify_email', 'reset_password')),
    token_sha256    text NOT NULL UNIQUE
                    CONSTRAINT user_tokens_token_sha256_check
                    CHECK (token_sha256 ~ '^[0-9a-f]{64}$'),
    created_at      timestamptz NOT NULL DEFAULT now(),
    expires_at      timestamptz NOT NULL,
    used_at         timestamptz,
    CONSTRAINT user_tokens_expiry_check CHECK (expires_at > created_at)
);
-- the per-account throttle of forgot-password looks up recent tokens
CREATE INDEX user_tokens_user_idx ON user_tokens (user_id, purpose, created_at);
CREATE INDEX user_tokens_expires_idx ON user_tokens (expires_at);

CREATE TABLE mail_outbox (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    token_id        bigint NOT NULL REFERENCES user_tokens (id) ON DELETE CASCADE,
    kind            text NOT NULL
                    CONSTRAINT mail_outbox_kind_check
                    CHECK (kind IN ('verify_email', 'reset_password')),
    to_addr         text NOT NULL
                    CONSTRAINT mail_outbox_to_addr_check
                    CHECK (length(to_addr) <= 254
                           AND to_addr ~ '^[^@[:space:][:cntrl:]]+@[^@[:space:][:cntrl:]]+$'),
    token           text
                    CONSTRAINT mail_outbox_token_check
                    CHECK (token ~ '^cmo_[A-Za-z0-9]{43}$'),
    created_at      timestamptz NOT NULL DEFAULT now(),
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    sent_at         timestamptz,
    failed_at       timestamptz,
    last_error      text
                    CONSTRAINT mail_outbox_last_error_check
                    CHECK (length(last_error) <= 512),
    -- the secret leaves the row when the row is done with
    CONSTRAINT mail_outbox_done_check
    CHECK ((sent_at IS NULL AND failed_at IS NULL) OR token IS NULL)
);
CREATE INDEX mail_outbox_due_idx ON mail_outbox (next_attempt_at)
    WHERE sent_at IS NULL AND failed_at IS NULL;

COMMENT ON COLUMN mail_outbox.token IS
    'the one-time token to mail; NULL once sent or given up';

-- Wakes `cinematch mailer --loop` (LISTEN cm_mail_outbox) at once instead
-- of at its next poll.  The payload is empty: the mailer reads the table.
CREATE FUNCTION cm_mail_outbox_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('cm_mail_outbox', '');
    RETURN NULL;
END;
$$;

CREATE TRIGGER mail_outbox_notify AFTER INSERT ON mail_outbox
    FOR EACH STATEMENT EXECUTE FUNCTION cm_mail_outbox_notify();
