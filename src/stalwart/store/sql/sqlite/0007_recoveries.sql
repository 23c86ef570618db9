-- How many times an instance was taken over from a worker that died (poison detection).
ALTER TABLE instances ADD COLUMN recoveries INTEGER NOT NULL DEFAULT 0;
