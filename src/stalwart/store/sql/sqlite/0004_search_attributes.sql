-- User-set search attributes (JSON object), filtered with json_extract.
ALTER TABLE instances ADD COLUMN search_attributes TEXT;
