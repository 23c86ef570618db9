-- What each worker runs ("name@version" JSON list), so instances pinned to versions no
-- live worker serves can be reported.
ALTER TABLE workers ADD COLUMN serves TEXT NOT NULL DEFAULT '[]';
