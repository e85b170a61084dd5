-- `outbox_depth` counts failed messages on every health check and metrics
-- scrape; outbox rows are kept, so without this that count scans them all.
-- The index holds only failed rows, so it stays small.
create index outbox_failed on outbox (id) where status = 'failed';
