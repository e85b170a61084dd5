-- One index for a destination's sends instead of two, and the prefix index
-- only where the conversion guard counts: every send inserts into each index
-- of verifications, and an index keyed on the destination lands on a random
-- page each time (a page of WAL, a b-tree descent, under the writer's lock).
--
-- (destination, customer_id, created_at) serves what both served: one
-- account's sends to a number over a window (the pending check, the
-- per-number limit, the wrong-code budget, a validation's wrong-code count),
-- by two equalities and a range; and the per-number cap across accounts
-- (destination = ? and created_at > ?), by one equality over that number's
-- rows, read from the index alone. A number's rows are few: the caps and
-- the retention bound them.
drop index verifications_by_destination;
drop index verifications_by_destination_time;
create index verifications_by_destination
    on verifications (destination, customer_id, created_at);

-- Rows the guard does not count (a safe-listed destination, a test number,
-- rows older than schema 4) have no prefix and no query looks them up by it.
drop index verifications_by_prefix;
create index verifications_by_prefix on verifications (prefix, created_at)
    where prefix is not null;
