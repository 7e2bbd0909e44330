-- Inhabitants per municipality, where an operator has given them: the denominator of per-capita
-- waste statistics. Reloading the municipality layer keeps them.
ALTER TABLE municipalities ADD COLUMN population integer CHECK (population > 0);
