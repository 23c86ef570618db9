-- Children of an instance (parent-close policies, describe(), listing by parent).
CREATE INDEX instances_parent ON instances (parent_id, created_at) WHERE parent_id IS NOT NULL;
