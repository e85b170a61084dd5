-- otpgate PostgreSQL schema, version 1.
--
-- Timestamps are bigint milliseconds since the Unix epoch, written by the
-- caller's clock (never now()), so tests can move time and every node agrees
-- with the SQLite backend on what a timestamp means.
--
-- Applied by src/postgres/migrate.rs inside one transaction holding an
-- advisory lock; the runner records the version in schema_version.

create table secrets (
    name text primary key,
    value bytea not null,
    created_at bigint not null
);

create table accounts (
    customer_id text primary key,
    password_hash text not null,
    email text,
    -- The e-mail in Unicode lower case, folded by the store (as the SQLite
    -- backend does), so log-in by e-mail is case-insensitive whatever the
    -- database's locale, and two accounts cannot share one address.
    email_key text unique,
    country text,
    -- The contract (section 5) says balances never go negative; the checks
    -- make a bug that tries fail loudly instead of minting credit.
    credits bigint not null check (credits >= 0),
    test_credits bigint not null check (test_credits >= 0),
    token_epoch bigint not null default 0,
    disabled boolean not null default false,
    settings jsonb not null default '{}'::jsonb,
    created_at bigint not null
);

create index accounts_created_at_idx on accounts (created_at desc, customer_id desc);

create table verifications (
    id bigint primary key check (id > 0 and id < 9007199254740992),
    customer_id text not null references accounts (customer_id),
    country_code integer not null,
    national text not null,
    -- E.164 digits without '+': what limits and the console filter match on.
    destination text not null,
    flow_type text not null,
    code_hash bytea not null,
    otp_length smallint not null,
    state text not null
        check (state in ('pending', 'completed', 'failed', 'cancelled')),
    wrong_attempts integer not null default 0 check (wrong_attempts >= 0),
    max_attempts integer not null,
    created_at bigint not null,
    expires_at bigint not null,
    completed_at bigint,
    transaction_id text not null,
    cost bigint not null check (cost >= 0),
    cost_test bigint not null check (cost_test >= 0 and cost_test <= cost),
    delivery text not null,
    channel text,
    gateway_id text,
    delivery_detail text
);

-- The 506 check, the per-number limit and the wrong-code budget all look up
-- one (account, destination) over a recent window.
create index verifications_destination_idx
    on verifications (customer_id, destination, created_at);
-- The per-account rate limit and the console's log, newest first.
create index verifications_customer_idx on verifications (customer_id, created_at desc);
create index verifications_completed_idx
    on verifications (customer_id, completed_at) where completed_at is not null;

create table outbox (
    id bigint generated always as identity primary key,
    verification_id bigint not null unique references verifications (id),
    customer_id text not null,
    -- Erased (null) once the message is sent or abandoned: it holds the code.
    text text,
    status text not null,
    attempts integer not null default 0,
    next_attempt_at bigint not null,
    lease_owner text,
    lease_until bigint,
    channel text,
    gateway_id text,
    last_error text,
    created_at bigint not null,
    updated_at bigint not null
);

-- What outbox_claim scans: only queued rows, oldest due first.
create index outbox_due_idx on outbox (next_attempt_at, id) where status = 'queued';
-- Delivery receipts find their message by the gateway's id.
create index outbox_gateway_idx on outbox (channel, gateway_id) where gateway_id is not null;
create index outbox_customer_idx on outbox (customer_id, created_at);

create table inbox (
    id bigint generated always as identity primary key,
    customer_id text,
    destination text not null,
    text text not null,
    verification_id bigint,
    created_at bigint not null
);

create index inbox_created_idx on inbox (created_at desc, id desc);
