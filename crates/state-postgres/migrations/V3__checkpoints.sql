-- Server-side checkpoints: rows are copied with INSERT ... SELECT, never through the client.
CREATE TABLE {{checkpoints}} (
    checkpoint_id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    key_prefix BYTEA NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    row_count BIGINT NOT NULL DEFAULT 0,
    data_size BIGINT NOT NULL DEFAULT 0
);

CREATE INDEX "{{table}}_checkpoints_prefix_idx" ON {{checkpoints}} (key_prefix, checkpoint_id);

CREATE TABLE {{checkpoint_rows}} (
    checkpoint_id BIGINT NOT NULL REFERENCES {{checkpoints}} (checkpoint_id) ON DELETE CASCADE,
    key BYTEA NOT NULL,
    value BYTEA NOT NULL,
    metadata JSONB,
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL,
    expires_at TIMESTAMPTZ,
    PRIMARY KEY (checkpoint_id, key)
);
