-- 011: ratings references checked once per statement, not once per row.
--
-- Why: a 1M-row ingest spent most of its time in the foreign keys of
-- ratings and ratings_buffer.  A foreign key checks each inserted row with
-- its own lookup (an RI trigger per row per key: ~14 s of a 20 s COPY of
-- 1M rows into ratings_buffer on the development box, docs/BENCHMARKS.md
-- "MLOps loop").  The same guarantee holds with statement-level triggers
-- over the transition tables: one semi-join per statement locks the
-- referenced movies and batches FOR KEY SHARE (as the foreign key does, so
-- a concurrent DELETE waits for us or we see it gone) and fails the whole
-- statement with SQLSTATE 23503 when a key is missing.  The actions of the
-- old keys (ON DELETE CASCADE / SET NULL) become statement triggers on the
-- referenced tables; changing a referenced key is refused, as NO ACTION
-- did.  Like the foreign keys' own triggers, the functions run as the
-- schema owner (SECURITY DEFINER, search_path pinned to the one of this
-- migration): a writer needs no rights on movies or ingestion_batches.
--
-- Also dropped: ratings_buffer_user_idx.  No query reads ratings_buffer by
-- (user_id, ts) (the app's own ratings are read from ratings), and keeping
-- it cost about as much per ingested row as the heap insert itself.  And
-- ratings_buffer_batch_idx becomes a BRIN index: a batch's rows are
-- appended together, so block ranges find them (the cascade below, a
-- batch's rows) at next to no cost per insert, where the btree cost about
-- 0.5 us of CPU per row (a third of the heap insert).

ALTER TABLE ratings
    DROP CONSTRAINT ratings_movie_id_fkey,
    DROP CONSTRAINT ratings_batch_id_fkey;
ALTER TABLE ratings_buffer
    DROP CONSTRAINT ratings_buffer_movie_id_fkey,
    DROP CONSTRAINT ratings_buffer_batch_id_fkey;
DROP INDEX ratings_buffer_user_idx;
DROP INDEX ratings_buffer_batch_idx;
CREATE INDEX ratings_buffer_batch_brin ON ratings_buffer USING brin (batch_id);


-- New or changed rows of ratings / ratings_buffer (transition table
-- cm_new): every movie_id in movies, every non-null batch_id in
-- ingestion_batches.
CREATE FUNCTION cm_rating_refs_check() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
DECLARE
    mids    integer[];
    bids    bigint[];
    n_have  bigint;
    bad     bigint;
BEGIN
    -- the distinct keys of both columns in one pass over the new rows
    -- (hashed grouping sets; count(DISTINCT) would sort every row)
    SELECT coalesce(array_agg(movie_id) FILTER (WHERE gm = 0), '{}'),
           coalesce(array_agg(batch_id) FILTER (WHERE gb = 0
                                                AND batch_id IS NOT NULL), '{}')
      INTO mids, bids
      FROM (SELECT movie_id, batch_id, GROUPING(movie_id) AS gm,
                   GROUPING(batch_id) AS gb
              FROM cm_new GROUP BY GROUPING SETS ((movie_id), (batch_id))) g;

    PERFORM 1 FROM movies m WHERE m.movie_id = ANY (mids) FOR KEY SHARE OF m;
    GET DIAGNOSTICS n_have = ROW_COUNT;
    IF n_have < cardinality(mids) THEN
        SELECT x INTO bad FROM unnest(mids) x
         WHERE NOT EXISTS (SELECT 1 FROM movies m WHERE m.movie_id = x)
         LIMIT 1;
        RAISE foreign_key_violation USING MESSAGE = format(
            'insert or update on table "%s" violates foreign key: '
            'movie_id %s is not in movies', TG_TABLE_NAME, bad);
    END IF;

    IF cardinality(bids) > 0 THEN
        PERFORM 1 FROM ingestion_batches b WHERE b.id = ANY (bids)
            FOR KEY SHARE OF b;
        GET DIAGNOSTICS n_have = ROW_COUNT;
        IF n_have < cardinality(bids) THEN
            SELECT x INTO bad FROM unnest(bids) x
             WHERE NOT EXISTS (SELECT 1 FROM ingestion_batches b
                                WHERE b.id = x) LIMIT 1;
            RAISE foreign_key_violation USING MESSAGE = format(
                'insert or update on table "%s" violates foreign key: '
                'batch_id %s is not in ingestion_batches', TG_TABLE_NAME,
                bad);
        END IF;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER ratings_refs_ins AFTER INSERT ON ratings
    REFERENCING NEW TABLE AS cm_new
    FOR EACH STATEMENT EXECUTE FUNCTION cm_rating_refs_check();
CREATE TRIGGER ratings_refs_upd AFTER UPDATE ON ratings
    REFERENCING NEW TABLE AS cm_new
    FOR EACH STATEMENT EXECUTE FUNCTION cm_rating_refs_check();
CREATE TRIGGER ratings_buffer_refs_ins AFTER INSERT ON ratings_buffer
    REFERENCING NEW TABLE AS cm_new
    FOR EACH STATEMENT EXECUTE FUNCTION cm_rating_refs_check();
CREATE TRIGGER ratings_buffer_refs_upd AFTER UPDATE ON ratings_buffer
    REFERENCING NEW TABLE AS cm_new
    FOR EACH STATEMENT EXECUTE FUNCTION cm_rating_refs_check();


-- ON DELETE CASCADE of both tables' movie_id.
CREATE FUNCTION cm_movies_deleted() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
BEGIN
    DELETE FROM ratings WHERE movie_id IN (SELECT movie_id FROM cm_old);
    DELETE FROM ratings_buffer
     WHERE movie_id IN (SELECT movie_id FROM cm_old);
    RETURN NULL;
END
$$;

CREATE TRIGGER movies_ratings_cascade AFTER DELETE ON movies
    REFERENCING OLD TABLE AS cm_old
    FOR EACH STATEMENT EXECUTE FUNCTION cm_movies_deleted();


-- ratings.batch_id ON DELETE SET NULL, ratings_buffer.batch_id CASCADE.
CREATE FUNCTION cm_batches_deleted() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
BEGIN
    UPDATE ratings SET batch_id = NULL
     WHERE batch_id IN (SELECT id FROM cm_old);
    DELETE FROM ratings_buffer WHERE batch_id IN (SELECT id FROM cm_old);
    RETURN NULL;
END
$$;

CREATE TRIGGER ingestion_batches_ratings_cascade
    AFTER DELETE ON ingestion_batches
    REFERENCING OLD TABLE AS cm_old
    FOR EACH STATEMENT EXECUTE FUNCTION cm_batches_deleted();


-- NO ACTION on key changes: a referenced movie_id / batch id stays.
CREATE FUNCTION cm_rating_key_kept() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
BEGIN
    IF TG_TABLE_NAME = 'movies' AND (
           EXISTS (SELECT 1 FROM ratings WHERE movie_id = OLD.movie_id)
        OR EXISTS (SELECT 1 FROM ratings_buffer
                    WHERE movie_id = OLD.movie_id))
    THEN
        RAISE foreign_key_violation USING MESSAGE = format(
            'update on table "movies" violates foreign key: movie_id %s '
            'is still referenced from ratings', OLD.movie_id);
    END IF;
    IF TG_TABLE_NAME = 'ingestion_batches' AND (
           EXISTS (SELECT 1 FROM ratings WHERE batch_id = OLD.id)
        OR EXISTS (SELECT 1 FROM ratings_buffer WHERE batch_id = OLD.id))
    THEN
        RAISE foreign_key_violation USING MESSAGE = format(
            'update on table "ingestion_batches" violates foreign key: '
            'batch %s is still referenced from ratings', OLD.id);
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER movies_key_kept BEFORE UPDATE OF movie_id ON movies
    FOR EACH ROW WHEN (OLD.movie_id IS DISTINCT FROM NEW.movie_id)
    EXECUTE FUNCTION cm_rating_key_kept();
CREATE TRIGGER ingestion_batches_key_kept BEFORE UPDATE OF id
    ON ingestion_batches
    FOR EACH ROW WHEN (OLD.id IS DISTINCT FROM NEW.id)
    EXECUTE FUNCTION cm_rating_key_kept();
