-- 001_users_auth: accounts, API keys, refresh tokens.
--
-- Conventions for every migration in this directory:
--   * enumerations are text + a named CHECK (easy to widen later with
--     DROP/ADD CONSTRAINT inside a transaction, unlike ALTER TYPE ... ADD VALUE);
--   * hashes are lowercase hex text (the nginx module talks to PostgreSQL in
--     text format), checked by a regex;
--   * timestamps are timestamptz; *_at NULL means "has not happened";
--   * no BEGIN/COMMIT here: cinematch migrate wraps each file in one transaction.

-- Keeps updated_at honest without every UPDATE having to remember it.
CREATE FUNCTION cm_touch_updated_at() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END;
$$;

-- App users get ids in the *rating* user space (the space ALS factors live
-- in) far above any dataset user: MovieLens-25M stops at 162541 and the full
-- ml-latest at about 330000, so 10,000,000 leaves room for every public
-- MovieLens release.  ratings.user_id holds these numbers; dataset users have
-- no users row.
CREATE SEQUENCE rating_user_id_seq AS integer START WITH 10000000 MINVALUE 10000000;

CREATE TABLE users (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    email           text NOT NULL
                    CONSTRAINT users_email_check
                    CHECK (length(email) <= 254 AND email ~ '^[^@[:space:]]+@[^@[:space:]]+$'),
    password_hash   text NOT NULL
                    CONSTRAINT users_password_hash_check
                    CHECK (length(password_hash) BETWEEN 1 AND 512),
    role            text NOT NULL DEFAULT 'user'
                    CONSTRAINT users_role_check CHECK (role IN ('user', 'admin')),
    display_name    text
                    CONSTRAINT users_display_name_check
                    CHECK (length(display_name) BETWEEN 1 AND 100),
    rating_user_id  integer NOT NULL UNIQUE
                    DEFAULT nextval('rating_user_id_seq')
                    CONSTRAINT users_rating_user_id_check
                    CHECK (rating_user_id >= 10000000),
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    last_login_at   timestamptz,
    disabled_at     timestamptz
);
ALTER SEQUENCE rating_user_id_seq OWNED BY users.rating_user_id;

COMMENT ON COLUMN users.password_hash IS
    'encoded password hash (libsodium crypto_pwhash_str, argon2id); ''!'' = no password login';
COMMENT ON COLUMN users.rating_user_id IS
    'this user''s id in ratings.user_id (the recommender''s user space)';

-- Case-insensitive uniqueness without the citext extension; look users up
-- with WHERE lower(email) = lower($1) to use it.
CREATE UNIQUE INDEX users_email_lower_key ON users (lower(email));

CREATE TRIGGER users_touch BEFORE UPDATE ON users
    FOR EACH ROW EXECUTE FUNCTION cm_touch_updated_at();


-- API keys: "cm_<prefix>_<secret>"; the prefix is shown and indexed, only
-- the sha256 of the whole key is stored.  A key is a credential of its user,
-- so it dies with the user.
CREATE TABLE api_keys (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id         bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name            text NOT NULL DEFAULT ''
                    CONSTRAINT api_keys_name_check CHECK (length(name) <= 100),
    prefix          text NOT NULL UNIQUE
                    CONSTRAINT api_keys_prefix_check CHECK (prefix ~ '^[A-Za-z0-9]{6,32}$'),
    key_sha256      text NOT NULL UNIQUE
                    CONSTRAINT api_keys_key_sha256_check CHECK (key_sha256 ~ '^[0-9a-f]{64}$'),
    scopes          text[] NOT NULL DEFAULT '{}'
                    CONSTRAINT api_keys_scopes_check
                    CHECK (array_position(scopes, NULL) IS NULL AND cardinality(scopes) <= 64),
    created_at      timestamptz NOT NULL DEFAULT now(),
    last_used_at    timestamptz,
    expires_at      timestamptz,
    revoked_at      timestamptz,
    CONSTRAINT api_keys_expiry_check CHECK (expires_at IS NULL OR expires_at > created_at)
);
CREATE INDEX api_keys_user_idx ON api_keys (user_id, created_at DESC);


-- Refresh tokens rotate on every use.  Each login starts a family; using a
-- token marks it spent and issues its child in the same family.  Presenting
-- a spent token again is reuse (theft): revoke the whole family.
CREATE TABLE refresh_tokens (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id         bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    token_sha256    text NOT NULL UNIQUE
                    CONSTRAINT refresh_tokens_token_sha256_check
                    CHECK (token_sha256 ~ '^[0-9a-f]{64}$'),
    family_id       uuid NOT NULL DEFAULT gen_random_uuid(),
    parent_id       bigint REFERENCES refresh_tokens (id) ON DELETE SET NULL,
    issued_at       timestamptz NOT NULL DEFAULT now(),
    expires_at      timestamptz NOT NULL,
    spent_at        timestamptz,
    revoked_at      timestamptz,
    user_agent      text CONSTRAINT refresh_tokens_user_agent_check CHECK (length(user_agent) <= 512),
    client_ip       inet,
    CONSTRAINT refresh_tokens_expiry_check CHECK (expires_at > issued_at)
);
CREATE INDEX refresh_tokens_family_idx ON refresh_tokens (family_id);
CREATE INDEX refresh_tokens_user_live_idx ON refresh_tokens (user_id)
    WHERE spent_at IS NULL AND revoked_at IS NULL;
CREATE INDEX refresh_tokens_expires_idx ON refresh_tokens (expires_at);
