-- Leave room on each instances page for the row's next version. Every step updates its
-- instance row; with full pages an update cannot stay on the page, so it is not HOT and
-- inserts a new entry into each of the table's indexes (a fan-out of 1,000 workflows did
-- 760 HOT updates out of 12,011). With free space, an update that changes no indexed
-- value (most steps) stays on the page and touches no index. Only pages written from
-- now on get the room; VACUUM FULL instances applies it to an existing table.
ALTER TABLE instances SET (fillfactor = 70);
