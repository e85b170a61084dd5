-- Fraud defence (SMS pumping, bill shock): what the send transaction reads
-- to apply caps, blocks and the conversion guard, and what operators act on.

-- The destination's prefix as the conversion guard counts it (the number
-- without its last digits). Null where the guard does not count the send
-- (a safe-listed destination, a test number) and on rows made before this
-- migration, which leave the guard's windows within a day.
alter table verifications add column prefix text;
create index verifications_by_prefix on verifications (prefix, created_at);
-- The account caps sum the cost of an account's sends over the last hour
-- and day on every send: with the cost in the index that is an index-only
-- scan. It replaces the index on (customer_id, created_at), whose queries it
-- serves as well.
drop index verifications_by_customer;
create index verifications_by_customer_cost on verifications (customer_id, created_at, cost);
-- The per-number cap counts a number's sends across all accounts.
create index verifications_by_destination_time on verifications (destination, created_at);

-- One row per blocked key: a prefix (across accounts) or an (account,
-- country) pair. Kept after the block ends, so a repeat knows its strikes.
create table fraud_blocks (
    scope text not null check (scope in ('prefix', 'country')),
    key text not null,
    reason text not null,
    strikes integer not null check (strikes >= 1),
    -- The block holds until here; lifting sets it to the lift time. The
    -- guard counts sends only from here on.
    blocked_until integer not null,
    lifted_at integer,
    created_at integer not null,
    updated_at integer not null,
    primary key (scope, key)
) strict;

-- Numbers and prefixes (E.164 digits) the conversion guard never blocks.
create table safe_list (
    entry text primary key,
    note text not null default '',
    created_at integer not null
) strict;

-- An account's own-number verifications; verified_at is set once the
-- account typed the code back. Test credits pay only for verified ones.
create table own_numbers (
    verification_id integer primary key references verifications (id),
    customer_id text not null references accounts (customer_id),
    destination text not null,
    created_at integer not null,
    verified_at integer
) strict;
create index own_numbers_by_customer on own_numbers (customer_id, destination);
