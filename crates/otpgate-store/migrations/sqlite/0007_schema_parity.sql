-- One schema on both backends (tests/store/schema.rs compares them): what
-- PostgreSQL had and SQLite lacked.
--
-- Each outbox row names its account, as on PostgreSQL, so the console's
-- channel statistics read an account's messages by their own index. Rows
-- written before are filled from their verification (every outbox row has
-- one: the foreign key).
alter table outbox add column customer_id text not null default '';
update outbox
   set customer_id = (select v.customer_id from verifications v where v.id = outbox.verification_id);
create index outbox_by_customer on outbox (customer_id, created_at);

-- Newest first per account, as on PostgreSQL (the caps read the newest
-- sends of an account).
drop index verifications_by_customer_cost;
create index verifications_by_customer_cost on verifications (customer_id, created_at desc, cost);
