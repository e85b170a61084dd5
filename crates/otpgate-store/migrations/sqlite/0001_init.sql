-- otpgate's SQLite schema, version 1. Times are integer milliseconds since
-- the Unix epoch, written by the caller's clock; money is integer credits.
-- Applied by `SqliteStore` at start-up through sqlx's migrator; never edit an
-- applied migration, add the next one.

-- Server-wide secrets (token signing key, code HMAC key): shared by every
-- process that opens this file, so tokens and codes survive restarts.
create table secrets (
    name text primary key,
    value blob not null,
    created_at integer not null
) strict;

create table accounts (
    customer_id text primary key,
    password_hash text not null,
    email text,
    -- The e-mail folded to lower case by the store, so log-in by e-mail is
    -- case-insensitive beyond ASCII (SQLite's nocase folds ASCII only).
    email_key text unique,
    country text,
    -- The checks are the last line behind contract §5: a balance never goes
    -- negative, whatever a bug above tries.
    credits integer not null check (credits >= 0),
    test_credits integer not null check (test_credits >= 0),
    token_epoch integer not null default 0,
    disabled integer not null default 0 check (disabled in (0, 1)),
    -- AccountSettings as JSON, so a new setting needs no migration.
    settings text not null default '{}',
    created_at integer not null
) strict;

create index accounts_by_created on accounts (created_at desc, customer_id desc);

create table verifications (
    -- The random id the contract hands out (below 2^53), used as the rowid.
    id integer primary key,
    customer_id text not null references accounts (customer_id),
    country_code integer not null,
    national text not null,
    -- E.164 digits without '+': what limits, 506 and the console key on.
    destination text not null,
    flow_type text not null,
    code_hash blob not null,
    otp_length integer not null,
    state text not null
        check (state in ('pending', 'completed', 'failed', 'cancelled')),
    wrong_attempts integer not null default 0,
    max_attempts integer not null,
    created_at integer not null,
    expires_at integer not null,
    completed_at integer,
    transaction_id text not null,
    cost integer not null check (cost >= 0),
    cost_test integer not null check (cost_test >= 0 and cost_test <= cost),
    delivery text not null
        check (delivery in ('queued', 'sent', 'delivered', 'undeliverable',
                            'expired', 'rejected', 'failed')),
    channel text,
    gateway_id text,
    delivery_detail text
) strict;

-- 506, the per-number limit and the wrong-code budget all look at one
-- (account, destination) over a recent window.
create index verifications_by_destination
    on verifications (customer_id, destination, created_at);
-- The console's log and stats, and the per-account send rate.
create index verifications_by_customer on verifications (customer_id, created_at);

-- One row per verification's message. The text holds the code, so it is
-- erased once the message is sent or abandoned.
create table outbox (
    id integer primary key autoincrement,
    verification_id integer not null unique references verifications (id),
    text text,
    status text not null
        check (status in ('queued', 'sent', 'delivered', 'undeliverable',
                          'expired', 'rejected', 'failed')),
    attempts integer not null default 0,
    next_attempt_at integer not null,
    -- A claim: the worker holding the message and until when. A queued row
    -- whose lease ran out is claimable again (its holder died).
    lease_owner text,
    lease_until integer,
    channel text,
    gateway_id text,
    last_error text,
    created_at integer not null,
    updated_at integer not null
) strict;

-- Claims scan queued rows by due time; sent and failed rows are not indexed.
create index outbox_due on outbox (next_attempt_at, id) where status = 'queued';
-- Delivery receipts name the channel and the gateway's message id.
create index outbox_by_gateway on outbox (channel, gateway_id)
    where gateway_id is not null;

-- Messages the development `inbox` channel "delivered".
create table inbox (
    id integer primary key autoincrement,
    customer_id text,
    destination text not null,
    text text not null,
    verification_id integer,
    created_at integer not null
) strict;

create index inbox_by_created on inbox (created_at desc, id desc);
create index inbox_by_destination on inbox (destination, created_at desc);
