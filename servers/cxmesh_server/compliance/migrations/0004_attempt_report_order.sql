-- When the report an attempt's row holds reached cxmesh: a report kept in Redis while
-- Postgres failed, stored after a newer report of the same attempt, must not replace the
-- newer one's result. Rows written before this column say nothing (NULL): any report
-- replaces them, as before. Added without a default, so no row is rewritten.
ALTER TABLE attempts ADD COLUMN reported_at timestamptz;
