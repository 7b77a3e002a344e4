-- The highest fencing token that wrote each key, kept apart from the value so that a
-- later put, delete or expiry does not forget it. NUMERIC holds every u64.
CREATE TABLE {{fences}} (
    key BYTEA PRIMARY KEY,
    token NUMERIC(20, 0) NOT NULL
);
