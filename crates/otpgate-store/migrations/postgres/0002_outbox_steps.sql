-- Fallback workflows: one verification may now have several outbox rows,
-- one per step (step 0 is the requested flow; steps 1 and 2 the fallback
-- flows of its route). Each step carries its own flow and, for e-mail, its
-- address; WhatsApp and voice steps keep the request's langId for the
-- template language. A later step is queued with a due time in the future
-- and is 'cancelled' (its text erased) once an earlier one is delivered or
-- the verification completes.
alter table outbox drop constraint outbox_verification_id_key;
alter table outbox add column step integer not null default 0;
-- Null: the verification's flow (rows written before this migration).
alter table outbox add column flow_type text;
alter table outbox add column address text;
alter table outbox add column lang text;
alter table outbox add constraint outbox_verification_step_key unique (verification_id, step);
