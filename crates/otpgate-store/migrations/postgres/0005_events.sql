-- otpgate PostgreSQL schema, version 4. Events (webhooks): an account's endpoint, and a durable queue of the
-- events of its verifications. An event row is written in the same
-- transaction as the change that causes it, so a crash loses neither; a
-- worker on any node leases due rows (as the outbox does) and delivers them
-- at least once.

create table webhooks (
    customer_id text primary key references accounts (customer_id),
    url text not null,
    -- `whsec_<base64>`: the HMAC key. Kept readable, because signing needs it.
    secret text not null,
    created_at bigint not null,
    updated_at bigint not null
);

create table events (
    id bigserial primary key,
    -- The `webhook-id` header: random, the same on every attempt.
    event_id text not null unique,
    customer_id text not null,
    verification_id bigint not null,
    kind text not null
        check (kind in ('verification.created', 'verification.delivered',
                        'verification.failed', 'verification.completed',
                        'verification.expired')),
    -- Facts captured when it happened (JSON), so every attempt sends the
    -- same body.
    detail text not null default '{}',
    status text not null
        check (status in ('pending', 'delivered', 'failed', 'dropped')),
    attempts bigint not null default 0,
    next_attempt_at bigint not null,
    lease_owner text,
    lease_until bigint,
    -- The last attempt's answer, for the console.
    response_status bigint,
    response text,
    delivered_at bigint,
    -- When it happened; retention deletes by it.
    created_at bigint not null,
    updated_at bigint not null,
    -- Each thing happens to a verification once; a second write of the same
    -- event (a duplicate receipt, two nodes sweeping) is ignored.
    unique (verification_id, kind)
);

create index events_due on events (next_attempt_at, id) where status = 'pending';
create index events_by_customer on events (customer_id, created_at desc, id desc);
create index events_by_created on events (created_at);

-- How far the expiry sweep has got: verifications whose `expires_at` is at
-- or before `until` have been looked at.
create table event_sweeps (
    name text primary key,
    until bigint not null
);

-- The expiry sweep reads verifications by expiry time.
create index verifications_by_expiry on verifications (expires_at);
