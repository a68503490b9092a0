-- A foreign key check per row costs an import of a million rows several seconds of
-- Postgres CPU. Records and error rows reference their list by (tenant_id, list_id) without
-- one: imports hold the list row FOR UPDATE while they run, and deleting a list deletes
-- its records, imports and errors in the same transaction.
ALTER TABLE records DROP CONSTRAINT records_tenant_id_list_id_fkey;
ALTER TABLE import_errors DROP CONSTRAINT import_errors_tenant_id_list_id_import_id_fkey;
