-- Completions counted beside `daily_stats`, as on PostgreSQL (where they
-- are spread over 16 rows per account and day, so that one account's
-- validations do not all wait for one row's lock). SQLite has one writer,
-- which never waits for a row lock: every completion here is counted in
-- shard 0. A day's completions are `daily_stats.completed` (those counted
-- before this migration) plus its rows here.
create table daily_completions (
    customer_id text not null references accounts (customer_id),
    day integer not null,
    shard integer not null,
    completed integer not null check (completed >= 0),
    primary key (customer_id, day, shard)
) strict;
