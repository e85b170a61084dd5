-- Completions counted in up to 16 rows per account and day, beside
-- `daily_stats`.
--
-- Every completion of an account's codes added one to the account's
-- `daily_stats` row for the day, in the validation's own transaction, so
-- each validation held that row's lock until its commit had reached the
-- disk: one account's validations, from every node, ran one after another
-- at the disk's pace. Now a completion is counted here, in the row of its
-- `shard` (the low four bits of the verification's id), so two validations
-- wait for each other only when their ids share a shard. A day's
-- completions are `daily_stats.completed` (those counted before this
-- migration, or by a node of an earlier build during a rolling upgrade)
-- plus the sum of its rows here; `daily_stats` is left as it was, so such
-- a node keeps working until it is replaced.
create table daily_completions (
    customer_id text not null references accounts (customer_id),
    day bigint not null,
    shard smallint not null,
    completed bigint not null check (completed >= 0),
    primary key (customer_id, day, shard)
);
