-- Thresholds that point downwards, and drought areas. A level sensor's thresholds rise (a flood:
-- the level reaches alert, then warning, then severe from below) or fall (a drought, such as
-- groundwater: the level sinks to alert, then warning, then severe from above). An area is a flood
-- area or a drought area; its warnings carry that as their category, so that receivers filter
-- and name them apart. Every sensor of an area points the way its hazard does (checked where the
-- setup is loaded).
ALTER TABLE level_thresholds ADD COLUMN direction text NOT NULL DEFAULT 'rising'
    CHECK (direction IN ('rising', 'falling'));
ALTER TABLE level_thresholds DROP CONSTRAINT level_thresholds_check;
ALTER TABLE level_thresholds ADD CONSTRAINT level_thresholds_order CHECK (
    CASE direction
        WHEN 'rising' THEN alert < warning AND warning < severe
        ELSE alert > warning AND warning > severe
    END);

ALTER TABLE flood_areas ADD COLUMN hazard text NOT NULL DEFAULT 'flood'
    CHECK (hazard IN ('flood', 'drought'));

ALTER TABLE warnings DROP CONSTRAINT warnings_category_check;
ALTER TABLE warnings ADD CONSTRAINT warnings_category_check
    CHECK (category IN ('flood', 'leak', 'drought'));
ALTER TABLE warnings DROP CONSTRAINT warnings_subject;
ALTER TABLE warnings ADD CONSTRAINT warnings_subject CHECK (
    CASE category
        WHEN 'leak' THEN area_key IS NULL AND sensor_key IS NOT NULL
        ELSE area_key IS NOT NULL AND sensor_key IS NULL
    END);

ALTER TABLE warning_events DROP CONSTRAINT warning_events_category_check;
ALTER TABLE warning_events ADD CONSTRAINT warning_events_category_check
    CHECK (category IN ('flood', 'leak', 'drought'));
ALTER TABLE warning_events DROP CONSTRAINT warning_events_subject;
ALTER TABLE warning_events ADD CONSTRAINT warning_events_subject CHECK (
    CASE category
        WHEN 'leak' THEN area_key IS NULL AND sensor_key IS NOT NULL
        ELSE area_key IS NOT NULL AND sensor_key IS NULL
    END);

-- Endpoints registered before drought areas existed keep the categories they chose.
ALTER TABLE webhooks DROP CONSTRAINT webhooks_categories_check;
ALTER TABLE webhooks ADD CONSTRAINT webhooks_categories_check
    CHECK (cardinality(categories) > 0 AND categories <@ ARRAY['flood', 'leak', 'drought']);
