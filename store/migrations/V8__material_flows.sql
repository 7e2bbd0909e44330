-- Material-flow records posted by waste operators: how many tonnes of a fraction (a European List
-- of Waste code) from a municipality went to which treatment at which facility, over a period of
-- whole days [period_from, period_to]. Kept with who posted them and when; never updated.
-- Overlapping records for the same municipality, code, treatment and facility are refused by the
-- store (under a lock per municipality), so a period is never counted twice.
CREATE TABLE material_flows (
    id                 bigserial PRIMARY KEY,
    period_from        date NOT NULL,
    period_to          date NOT NULL,
    municipality_code  text NOT NULL REFERENCES municipalities (code),
    waste_code         text NOT NULL,
    tonnes             double precision NOT NULL CHECK (tonnes >= 0 AND tonnes < 'Infinity'),
    treatment          text NOT NULL CHECK (treatment IN
                           ('preparing_for_reuse', 'recycling', 'other_recovery', 'landfill')),
    facility           text NOT NULL,
    posted_by          text NOT NULL,
    posted_at          timestamptz NOT NULL DEFAULT now(),
    CHECK (period_to >= period_from)
);
CREATE INDEX material_flows_municipality_period ON material_flows (municipality_code, period_from);

CREATE FUNCTION material_flows_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'material_flows is append-only';
END
$$;
CREATE TRIGGER material_flows_append_only BEFORE UPDATE OR DELETE ON material_flows
    FOR EACH ROW EXECUTE FUNCTION material_flows_append_only();
