-- reverify: make the audit trail append-only for the application's role.
--
-- Run once by an operator, as the owner of the reverify database (or a superuser),
-- AFTER `reverify migrate` has created the tables, and again after an upgrade that
-- adds tables (GRANT ... ON ALL TABLES covers only the tables that exist):
--
--   psql "postgres://OWNER@HOST/reverify" -v app_role=reverify_app \
--        -f deploy/sql/events-append-only.sql
--
-- It is not a migration: migrations run as whatever role the worker connects as,
-- and that role must not be the one that can take these rights back. The layout it
-- expects: an owner role that owns the schema and runs migrations (`reverify
-- migrate` with the owner's database_url, e.g. in the setup Job), and the
-- application role (:app_role) that every worker, daemon and dashboard connects as.
--
-- What the application role keeps on `events`: SELECT, INSERT, and UPDATE of the
-- three seal columns only (chain_seq, prev_hash, hash), which the sealer writes
-- once into rows whose seal is empty. What it loses: DELETE, TRUNCATE, and UPDATE
-- of every other column (who, what, when, the detail). A trigger refuses a second
-- seal of a sealed row, so the role cannot re-seal an event either.
--
-- What it does not stop: the owner and superusers can still do anything (keep
-- their credentials away from the workers); the application role can still INSERT
-- made-up events, which the next seal takes in (`campaign audit --verify` lists
-- what each seal took in, and audit_anchor keeps every head outside the database).

\set ON_ERROR_STOP on
BEGIN;

REVOKE ALL ON events FROM PUBLIC;
REVOKE ALL ON events FROM :"app_role";
GRANT SELECT, INSERT ON events TO :"app_role";
GRANT UPDATE (chain_seq, prev_hash, hash) ON events TO :"app_role";
GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO :"app_role";

-- the chain's head moves forward only
REVOKE ALL ON audit_chain FROM PUBLIC;
REVOKE ALL ON audit_chain FROM :"app_role";
GRANT SELECT, UPDATE (seq, hash, sealed_at) ON audit_chain TO :"app_role";

CREATE OR REPLACE FUNCTION reverify_events_seal_once() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.chain_seq IS NOT NULL OR OLD.hash IS NOT NULL THEN
        RAISE EXCEPTION 'event % is sealed: the audit trail is append-only', OLD.event_id
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END $$;
DROP TRIGGER IF EXISTS events_seal_once ON events;
CREATE TRIGGER events_seal_once BEFORE UPDATE ON events
    FOR EACH ROW EXECUTE FUNCTION reverify_events_seal_once();

CREATE OR REPLACE FUNCTION reverify_audit_head_forward() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.seq < OLD.seq OR (NEW.seq = OLD.seq AND NEW.hash IS DISTINCT FROM OLD.hash) THEN
        RAISE EXCEPTION 'the audit chain head moves forward only (from % to %)', OLD.seq, NEW.seq
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END $$;
DROP TRIGGER IF EXISTS audit_head_forward ON audit_chain;
CREATE TRIGGER audit_head_forward BEFORE UPDATE ON audit_chain
    FOR EACH ROW EXECUTE FUNCTION reverify_audit_head_forward();

-- every other table: what the worker needs (it never drops or alters anything)
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO :"app_role";
REVOKE DELETE, TRUNCATE ON events, audit_chain FROM :"app_role";
REVOKE UPDATE ON events FROM :"app_role";
GRANT UPDATE (chain_seq, prev_hash, hash) ON events TO :"app_role";
REVOKE INSERT, UPDATE ON audit_chain FROM :"app_role";
GRANT UPDATE (seq, hash, sealed_at) ON audit_chain TO :"app_role";

COMMIT;
