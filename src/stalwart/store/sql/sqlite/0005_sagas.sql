-- Sagas: the compensating status is active, and a failed saga can be parked for an operator.
DROP INDEX instances_due;
CREATE INDEX instances_due ON instances (wake_at)
    WHERE owner IS NULL AND status IN ('pending', 'running', 'compensating');
ALTER TABLE instances ADD COLUMN needs_intervention INTEGER NOT NULL DEFAULT 0;
