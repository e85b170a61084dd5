-- One schema on both backends (tests/store/schema.rs compares them): the
-- indexes SQLite had and PostgreSQL lacked, and one that nothing reads.
--
-- The inbox listed by number (`otpgate inbox --to`, the console sandbox).
create index inbox_destination_idx on inbox (destination, created_at desc);
-- Failed messages, counted for health and metrics; only failed rows, so it
-- stays small.
create index outbox_failed_idx on outbox (id) where status = 'failed';
-- Completions are counted in daily_stats since schema 4; no query reads
-- verifications by completion time any more.
drop index verifications_completed_idx;
