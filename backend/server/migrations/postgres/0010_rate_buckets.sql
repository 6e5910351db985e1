-- Token buckets shared by the server replicas of one database (PostgreSQL): the demo mode's write limits per address
-- and the sign-in throttles, so that N replicas allow what one allows. A single SQLite process keeps them in memory and
-- leaves this table empty. Times are seconds since the Unix epoch; `full_at` is when the bucket is full again (a row
-- past it carries no state and is swept).
CREATE TABLE rate_buckets (
    scope   TEXT NOT NULL,
    key     TEXT NOT NULL,
    tokens  DOUBLE PRECISION NOT NULL,
    at      DOUBLE PRECISION NOT NULL,
    full_at DOUBLE PRECISION NOT NULL,
    granted BIGINT NOT NULL,
    PRIMARY KEY (scope, key)
);
