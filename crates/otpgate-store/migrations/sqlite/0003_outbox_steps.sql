-- Fallback workflows: one verification may now have several outbox rows,
-- one per step (step 0 is the requested flow; steps 1 and 2 the fallback
-- flows of its route). Each step carries its own flow and, for e-mail, its
-- address; WhatsApp and voice steps keep the request's langId for the
-- template language. A later step is queued with a due time in the future
-- and is 'cancelled' (its text erased) once an earlier one is delivered or
-- the verification completes.
--
-- SQLite cannot drop the old `unique (verification_id)` constraint nor
-- extend a check constraint in place, so the table is rebuilt, rows and ids
-- kept (the autoincrement counter follows the copied ids).
create table outbox_new (
    id integer primary key autoincrement,
    verification_id integer not null references verifications (id),
    step integer not null default 0,
    -- Null: the verification's flow (rows written before this migration).
    flow_type text,
    address text,
    lang text,
    text text,
    status text not null
        check (status in ('queued', 'sent', 'delivered', 'undeliverable',
                          'expired', 'rejected', 'failed', 'cancelled')),
    attempts integer not null default 0,
    next_attempt_at integer not null,
    lease_owner text,
    lease_until integer,
    channel text,
    gateway_id text,
    last_error text,
    created_at integer not null,
    updated_at integer not null,
    unique (verification_id, step)
) strict;

insert into outbox_new (id, verification_id, step, text, status, attempts, next_attempt_at,
                        lease_owner, lease_until, channel, gateway_id, last_error,
                        created_at, updated_at)
select id, verification_id, 0, text, status, attempts, next_attempt_at,
       lease_owner, lease_until, channel, gateway_id, last_error, created_at, updated_at
  from outbox;

drop table outbox;
alter table outbox_new rename to outbox;

create index outbox_due on outbox (next_attempt_at, id) where status = 'queued';
create index outbox_by_gateway on outbox (channel, gateway_id)
    where gateway_id is not null;
create index outbox_failed on outbox (id) where status = 'failed';
