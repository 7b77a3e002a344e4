-- The guide's state table. Keys carry the backend's key prefix; every read filters
-- expired rows itself, so cleanup only reclaims space.
CREATE TABLE {{entries}} (
    key BYTEA PRIMARY KEY,
    value BYTEA NOT NULL,
    metadata JSONB,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at TIMESTAMPTZ
);

-- No now() in the predicate: index predicates must be IMMUTABLE.
CREATE INDEX "{{table}}_expires_at_idx" ON {{entries}} (expires_at)
    WHERE expires_at IS NOT NULL;

-- jsonb_path_ops serves the containment (@>) queries of query_metadata.
CREATE INDEX "{{table}}_metadata_idx" ON {{entries}} USING GIN (metadata jsonb_path_ops);

CREATE INDEX "{{table}}_updated_at_idx" ON {{entries}} (updated_at DESC);

CREATE FUNCTION {{cleanup_fn}}() RETURNS INTEGER
LANGUAGE plpgsql AS $$
DECLARE
    deleted_count INTEGER;
BEGIN
    DELETE FROM {{entries}} WHERE expires_at IS NOT NULL AND expires_at <= now();
    GET DIAGNOSTICS deleted_count = ROW_COUNT;
    RETURN deleted_count;
END;
$$;
