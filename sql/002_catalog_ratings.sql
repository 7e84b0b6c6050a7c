-- 002_catalog_ratings: movies, ratings, the buffer of new ratings, and the
-- ingestion batches those arrive in.

-- MovieLens ratings are half stars from 0.5 to 5.0.  numeric(2,1) rounds
-- input to one decimal first, so 4.75 becomes 4.8 and is then rejected.
CREATE DOMAIN rating_value AS numeric(2,1)
    CONSTRAINT rating_value_check
    CHECK (VALUE BETWEEN 0.5 AND 5.0 AND VALUE * 2 = trunc(VALUE * 2));

CREATE TABLE movies (
    movie_id        integer PRIMARY KEY
                    CONSTRAINT movies_movie_id_check CHECK (movie_id > 0),
    title           text NOT NULL
                    CONSTRAINT movies_title_check CHECK (length(title) BETWEEN 1 AND 500),
    year            smallint
                    CONSTRAINT movies_year_check CHECK (year BETWEEN 1870 AND 2100),
    genres          text[] NOT NULL DEFAULT '{}'
                    CONSTRAINT movies_genres_check CHECK (array_position(genres, NULL) IS NULL),
    imdb_id         integer,
    tmdb_id         integer,
    created_at      timestamptz NOT NULL DEFAULT now()
);
COMMENT ON COLUMN movies.title IS 'title without the trailing "(year)" of MovieLens';
COMMENT ON COLUMN movies.genres IS 'MovieLens genres; "(no genres listed)" is stored as {}';
CREATE INDEX movies_genres_idx ON movies USING gin (genres);
-- prefix search: WHERE lower(title) LIKE lower($1) || '%'
CREATE INDEX movies_title_lower_idx ON movies (lower(title) text_pattern_ops);


-- One row per ingested file.  The file's sha256 makes re-ingesting the same
-- file a no-op; a failed attempt does not block a retry, hence the partial
-- unique index (INSERT ... ON CONFLICT (file_sha256) WHERE status <> 'failed').
CREATE TABLE ingestion_batches (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    file_name       text NOT NULL,
    file_sha256     text NOT NULL
                    CONSTRAINT ingestion_batches_file_sha256_check
                    CHECK (file_sha256 ~ '^[0-9a-f]{64}$'),
    file_bytes      bigint NOT NULL
                    CONSTRAINT ingestion_batches_file_bytes_check CHECK (file_bytes >= 0),
    format          text NOT NULL DEFAULT 'ml-csv'
                    CONSTRAINT ingestion_batches_format_check
                    CHECK (format IN ('ml-csv', 'ml-100k', 'ml-1m', 'synth')),
    status          text NOT NULL DEFAULT 'running'
                    CONSTRAINT ingestion_batches_status_check
                    CHECK (status IN ('running', 'complete', 'failed')),
    rows_total      bigint NOT NULL DEFAULT 0,
    rows_accepted   bigint NOT NULL DEFAULT 0,
    rows_rejected   bigint NOT NULL DEFAULT 0,
    rows_duplicate  bigint NOT NULL DEFAULT 0,
    error           text,
    started_at      timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz,
    CONSTRAINT ingestion_batches_counts_check
        CHECK (rows_accepted >= 0 AND rows_rejected >= 0 AND rows_duplicate >= 0
               AND rows_accepted + rows_rejected + rows_duplicate <= rows_total),
    CONSTRAINT ingestion_batches_finished_check
        CHECK ((status = 'running') = (finished_at IS NULL)),
    CONSTRAINT ingestion_batches_error_check
        CHECK (status <> 'failed' OR error IS NOT NULL)
);
CREATE UNIQUE INDEX ingestion_batches_file_sha256_key ON ingestion_batches (file_sha256)
    WHERE status <> 'failed';
CREATE INDEX ingestion_batches_started_idx ON ingestion_batches (started_at DESC);

-- Lines that were not ingested, with why; kept so an operator can fix and
-- resubmit them.
CREATE TABLE ingestion_rejects (
    batch_id        bigint NOT NULL REFERENCES ingestion_batches (id) ON DELETE CASCADE,
    line_no         bigint NOT NULL
                    CONSTRAINT ingestion_rejects_line_no_check CHECK (line_no > 0),
    raw_line        text NOT NULL
                    CONSTRAINT ingestion_rejects_raw_line_check CHECK (length(raw_line) <= 4096),
    reason          text NOT NULL
                    CONSTRAINT ingestion_rejects_reason_check CHECK (length(reason) BETWEEN 1 AND 500),
    PRIMARY KEY (batch_id, line_no)
);


-- The training set of record.  user_id is in the rating user space (dataset
-- users as they come; app users from users.rating_user_id), so it has no
-- foreign key.  One rating per (user, movie): a newer one replaces it.
CREATE TABLE ratings (
    user_id         integer NOT NULL
                    CONSTRAINT ratings_user_id_check CHECK (user_id > 0),
    movie_id        integer NOT NULL REFERENCES movies (movie_id) ON DELETE CASCADE,
    rating          rating_value NOT NULL,
    ts              timestamptz NOT NULL,
    source          text NOT NULL DEFAULT 'dataset'
                    CONSTRAINT ratings_source_check CHECK (source IN ('dataset', 'app')),
    data_split      text NOT NULL DEFAULT 'train'
                    CONSTRAINT ratings_data_split_check
                    CHECK (data_split IN ('train', 'validation', 'test')),
    batch_id        bigint REFERENCES ingestion_batches (id) ON DELETE SET NULL,
    PRIMARY KEY (user_id, movie_id)
);
CREATE INDEX ratings_movie_idx ON ratings (movie_id);
CREATE INDEX ratings_split_idx ON ratings (data_split) WHERE data_split <> 'train';


-- New ratings since the last training run (ingested batches and the app).
-- Drift compares this against the training ratings; a retrain merges it
-- into ratings and stamps merged_at.
CREATE TABLE ratings_buffer (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id         integer NOT NULL
                    CONSTRAINT ratings_buffer_user_id_check CHECK (user_id > 0),
    movie_id        integer NOT NULL REFERENCES movies (movie_id) ON DELETE CASCADE,
    rating          rating_value NOT NULL,
    ts              timestamptz NOT NULL,
    source          text NOT NULL
                    CONSTRAINT ratings_buffer_source_check CHECK (source IN ('dataset', 'app')),
    batch_id        bigint REFERENCES ingestion_batches (id) ON DELETE CASCADE,
    received_at     timestamptz NOT NULL DEFAULT now(),
    merged_at       timestamptz,
    CONSTRAINT ratings_buffer_batch_check CHECK ((source = 'dataset') = (batch_id IS NOT NULL))
);
CREATE INDEX ratings_buffer_pending_idx ON ratings_buffer (id) WHERE merged_at IS NULL;
CREATE INDEX ratings_buffer_batch_idx ON ratings_buffer (batch_id);
CREATE INDEX ratings_buffer_user_idx ON ratings_buffer (user_id, ts DESC);
