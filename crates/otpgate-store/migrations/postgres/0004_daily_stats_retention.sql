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
    day bigint not null,
    sends bigint not null default 0 check (sends >= 0),
    completed bigint not null default 0 check (completed >= 0),
    created_at bigint not null,
    primary key (customer_id, day)
);

-- Backfill from the verifications a database already holds.
insert into daily_stats (customer_id, day, sends, completed, created_at)
select customer_id,
       floor(created_at::numeric / 86400000)::bigint as day,
       count(*),
       count(*) filter (where state = 'completed'),
       min(created_at)
  from verifications
 group by customer_id, day;

-- The retention sweep deletes the oldest verifications first.
create index verifications_created_idx on verifications (created_at, id);
