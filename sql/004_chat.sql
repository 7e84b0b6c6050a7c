-- 004_chat: conversations with the dialog model, their messages, feedback.

-- uuid ids: they appear in URLs and must not be enumerable.
CREATE TABLE conversations (
    id                  uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id             bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    title               text CONSTRAINT conversations_title_check CHECK (length(title) <= 200),
    model_name          model_name,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX conversations_user_updated_idx ON conversations (user_id, updated_at DESC);
CREATE TRIGGER conversations_touch BEFORE UPDATE ON conversations
    FOR EACH ROW EXECUTE FUNCTION cm_touch_updated_at();

-- status: complete = generation finished (stop or length); partial = the
-- client went away or cancelled, content holds what was streamed; error =
-- generation failed, content may be partial and error says why.
CREATE TABLE messages (
    id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    conversation_id     uuid NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    role                text NOT NULL
                        CONSTRAINT messages_role_check CHECK (role IN ('system', 'user', 'assistant')),
    content             text NOT NULL
                        CONSTRAINT messages_content_check CHECK (length(content) <= 100000),
    status              text NOT NULL DEFAULT 'complete'
                        CONSTRAINT messages_status_check CHECK (status IN ('complete', 'partial', 'error')),
    finish_reason       text CONSTRAINT messages_finish_reason_check
                        CHECK (finish_reason IN ('stop', 'length', 'cancel', 'error')),
    error               text,
    model_version_id    bigint REFERENCES model_versions (id) ON DELETE SET NULL,
    prompt_tokens       integer CONSTRAINT messages_prompt_tokens_check CHECK (prompt_tokens >= 0),
    completion_tokens   integer CONSTRAINT messages_completion_tokens_check CHECK (completion_tokens >= 0),
    first_token_ms      real CONSTRAINT messages_first_token_ms_check CHECK (first_token_ms >= 0),
    latency_ms          real CONSTRAINT messages_latency_ms_check CHECK (latency_ms >= 0),
    request_id          text,
    created_at          timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT messages_error_check CHECK (status <> 'error' OR error IS NOT NULL)
);
CREATE INDEX messages_conversation_idx ON messages (conversation_id, id);

-- One vote per user per message; voting again updates it.
CREATE TABLE message_feedback (
    message_id          bigint NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    user_id             bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    rating              smallint NOT NULL
                        CONSTRAINT message_feedback_rating_check CHECK (rating IN (-1, 1)),
    comment             text CONSTRAINT message_feedback_comment_check CHECK (length(comment) <= 2000),
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (message_id, user_id)
);
CREATE INDEX message_feedback_user_idx ON message_feedback (user_id);
CREATE TRIGGER message_feedback_touch BEFORE UPDATE ON message_feedback
    FOR EACH ROW EXECUTE FUNCTION cm_touch_updated_at();
