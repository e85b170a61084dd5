-- Daily aggregates that outlive retention, and the index retention sweeps by.
--
-- The console's chart counts sends and completions per UTC day. Those counts
-- used to be computed from `verifications`; once old verifications (and the
-- phone numbers in them) are deleted after `retention.days`, the days they
-- covered would read as zero. So the store keeps the counts here, one row per
-- (account, day), updated in the same transaction as the send or completion
-- it counts. `day` is whole days since the Unix epoch (UTC, floor division);
-- a completion counts on the day of its send, as before.
create table daily_stats (
    customer_id text not null references accounts (customer_id),
    day integer not null,
    sends integer not null default 0 check (sends >= 0),
    completed integer not null default 0 check (completed >= 0),
    created_at integer not null,
    primary key (customer_id, day)
) strict;

-- Backfill from the verifications a database already holds.
insert into daily_stats (customer_id, day, sends, completed, created_at)
select customer_id,
       (created_at - ((created_at % 86400000) + 86400000) % 86400000) / 86400000 as day,
       count(*),
       sum(state = 'completed'),
       min(created_at)
  from verifications
 group by customer_id, day;

-- The retention sweep deletes the oldest verifications first.
create index verifications_by_created on verifications (created_at, id);
