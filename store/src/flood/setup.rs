//! The flood setup: municipalities, areas, links, thresholds, rain rules and quality rules, replaced as a whole
//! or changed over the API, and announced so that analytics reload.

use super::*;

impl Store {
    /// Replaces the municipality layer.
    pub async fn replace_municipalities(&self, rows: &[MunicipalityRow]) -> Result<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.context("begin municipalities")?;
        for row in rows {
            tx.execute(
                "INSERT INTO municipalities (code, name, boundary) VALUES ($1, $2, $3) \
                 ON CONFLICT (code) DO UPDATE SET name = EXCLUDED.name, boundary = EXCLUDED.boundary",
                &[&row.code, &row.name, &row.boundary],
            )
            .await
            .context("upserting a municipality")?;
        }
        coordination::notify(tx.client(), &Notice::ReferenceChanged).await?;
        tx.commit().await.context("commit municipalities")
    }

    /// Upserts flood areas (replacing each area's sensors and links), thresholds and rain rules.
    pub async fn apply_flood_setup(&self, setup: &FloodSetup) -> Result<()> {
        self.apply_flood_setup_audited(setup, None).await
    }

    /// [`Store::apply_flood_setup`] with an audit entry in the same transaction. Either way the
    /// change is announced on [`Channel::FloodSetupChanged`] so that running analytics reload it.
    pub async fn apply_flood_setup_audited(
        &self,
        setup: &FloodSetup,
        audit: Option<&crate::audit::Audit>,
    ) -> Result<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.context("begin flood setup")?;
        if let Some(audit) = audit {
            crate::audit::record(&tx, audit).await?;
        }
        for area in &setup.areas {
            tx.execute(
                "INSERT INTO flood_areas (key, name, polygon, municipality_codes, forecast_horizon, hazard) \
                 VALUES ($1, $2, $3, $4, make_interval(secs => $5), $6) \
                 ON CONFLICT (key) DO UPDATE SET name = EXCLUDED.name, polygon = EXCLUDED.polygon, \
                 municipality_codes = EXCLUDED.municipality_codes, \
                 forecast_horizon = EXCLUDED.forecast_horizon, hazard = EXCLUDED.hazard, updated_at = now()",
                &[
                    &area.key,
                    &area.name,
                    &area.polygon,
                    &area.municipality_codes,
                    &secs(area.forecast_horizon),
                    &area.hazard.name(),
                ],
            )
            .await
            .context("upserting a flood area")?;
            tx.execute(
                "DELETE FROM flood_area_sensors WHERE area_key = $1",
                &[&area.key],
            )
            .await
            .context("clearing an area's sensors")?;
            tx.execute(
                "DELETE FROM river_links WHERE downstream_area = $1",
                &[&area.key],
            )
            .await
            .context("clearing an area's links")?;
            for sensor in &area.sensors {
                tx.execute(
                    "INSERT INTO flood_area_sensors (area_key, sensor_key) VALUES ($1, $2)",
                    &[&area.key, sensor],
                )
                .await
                .context("adding a sensor to an area")?;
            }
        }
        for link in &setup.links {
            tx.execute(
                "INSERT INTO river_links (upstream_sensor, downstream_area, travel_time) \
                 VALUES ($1, $2, make_interval(secs => $3)) \
                 ON CONFLICT (upstream_sensor, downstream_area) DO UPDATE SET travel_time = EXCLUDED.travel_time",
                &[&link.upstream_sensor, &link.downstream_area, &secs(link.travel_time)],
            )
            .await
            .context("upserting a river link")?;
        }
        for t in &setup.thresholds {
            tx.execute(
                "INSERT INTO level_thresholds (sensor_key, alert, warning, severe, persistence, min_readings, \
                 hysteresis, hold, rate_window, lead_time, plausible_low, plausible_high, spike_floor, rate_alert, direction) \
                 VALUES ($1, $2, $3, $4, make_interval(secs => $5), $6, $7, make_interval(secs => $8), \
                 make_interval(secs => $9), make_interval(secs => $10), $11, $12, $13, $14, $15) \
                 ON CONFLICT (sensor_key) DO UPDATE SET alert = EXCLUDED.alert, warning = EXCLUDED.warning, \
                 severe = EXCLUDED.severe, persistence = EXCLUDED.persistence, min_readings = EXCLUDED.min_readings, \
                 hysteresis = EXCLUDED.hysteresis, hold = EXCLUDED.hold, rate_window = EXCLUDED.rate_window, \
                 lead_time = EXCLUDED.lead_time, plausible_low = EXCLUDED.plausible_low, \
                 plausible_high = EXCLUDED.plausible_high, spike_floor = EXCLUDED.spike_floor, \
                 rate_alert = EXCLUDED.rate_alert, direction = EXCLUDED.direction",
                &[
                    &t.sensor_key,
                    &t.alert,
                    &t.warning,
                    &t.severe,
                    &secs(t.persistence),
                    &t.min_readings,
                    &t.hysteresis,
                    &secs(t.hold),
                    &secs(t.rate_window),
                    &secs(t.lead_time),
                    &t.plausible_low,
                    &t.plausible_high,
                    &t.spike_floor,
                    &t.rate_alert,
                    &if t.falling { "falling" } else { "rising" },
                ],
            )
            .await
            .context("upserting a threshold")?;
        }
        for r in &setup.rain_rules {
            tx.execute(
                "INSERT INTO rain_rules (sensor_key, window_length, more_than_mm, severity) \
                 VALUES ($1, make_interval(secs => $2), $3, $4) \
                 ON CONFLICT (sensor_key, window_length) DO UPDATE SET more_than_mm = EXCLUDED.more_than_mm, \
                 severity = EXCLUDED.severity",
                &[&r.sensor_key, &secs(r.window), &r.more_than_mm, &r.severity.level()],
            )
            .await
            .context("upserting a rain rule")?;
        }
        coordination::notify(tx.client(), &Notice::FloodSetupChanged).await?;
        tx.commit().await.context("commit flood setup")
    }

    /// Replaces every rain rule of one sensor (none left means the default rules apply), with an
    /// audit entry, in one transaction announced on [`Channel::FloodSetupChanged`].
    pub async fn replace_rain_rules(
        &self,
        sensor_key: &str,
        rules: &[RainRuleRow],
        audit: &crate::audit::Audit,
    ) -> Result<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.context("begin rain rules")?;
        tx.execute(
            "DELETE FROM rain_rules WHERE sensor_key = $1",
            &[&sensor_key],
        )
        .await
        .context("removing rain rules")?;
        for r in rules {
            tx.execute(
                "INSERT INTO rain_rules (sensor_key, window_length, more_than_mm, severity) \
                 VALUES ($1, make_interval(secs => $2), $3, $4)",
                &[
                    &sensor_key,
                    &secs(r.window),
                    &r.more_than_mm,
                    &r.severity.level(),
                ],
            )
            .await
            .context("inserting a rain rule")?;
        }
        crate::audit::commit_change(tx, audit, Notice::FloodSetupChanged).await
    }

    pub async fn flood_setup(&self) -> Result<FloodSetup> {
        let client = self.client().await?;
        let mut sensors: HashMap<String, Vec<String>> = HashMap::new();
        for row in client
            .query(
                "SELECT area_key, sensor_key FROM flood_area_sensors ORDER BY 1, 2",
                &[],
            )
            .await
            .context("loading area sensors")?
        {
            sensors.entry(row.get(0)).or_default().push(row.get(1));
        }
        let areas = client
            .query(
                "SELECT key, name, polygon, municipality_codes, \
                 extract(epoch FROM forecast_horizon)::float8, hazard FROM flood_areas ORDER BY key",
                &[],
            )
            .await
            .context("loading flood areas")?
            .iter()
            .map(|r| AreaRow {
                key: r.get(0),
                name: r.get(1),
                polygon: r.get(2),
                municipality_codes: r.get(3),
                sensors: sensors.remove(r.get::<_, &str>(0)).unwrap_or_default(),
                forecast_horizon: duration(r.get(4)),
                hazard: Category::parse(r.get(5)).unwrap_or(Category::Flood),
            })
            .collect();
        let links = client
            .query(
                "SELECT upstream_sensor, downstream_area, extract(epoch FROM travel_time)::float8 FROM river_links",
                &[],
            )
            .await
            .context("loading river links")?
            .iter()
            .map(|r| LinkRow {
                upstream_sensor: r.get(0),
                downstream_area: r.get(1),
                travel_time: duration(r.get(2)),
            })
            .collect();
        let thresholds = client
            .query(
                "SELECT sensor_key, alert, warning, severe, extract(epoch FROM persistence)::float8, min_readings, \
                 hysteresis, extract(epoch FROM hold)::float8, extract(epoch FROM rate_window)::float8, \
                 extract(epoch FROM lead_time)::float8, plausible_low, plausible_high, spike_floor, rate_alert, \
                 direction = 'falling' FROM level_thresholds",
                &[],
            )
            .await
            .context("loading thresholds")?
            .iter()
            .map(|r| ThresholdRow {
                sensor_key: r.get(0),
                alert: r.get(1),
                warning: r.get(2),
                severe: r.get(3),
                persistence: duration(r.get(4)),
                min_readings: r.get(5),
                hysteresis: r.get(6),
                hold: duration(r.get(7)),
                rate_window: duration(r.get(8)),
                lead_time: duration(r.get(9)),
                plausible_low: r.get(10),
                plausible_high: r.get(11),
                spike_floor: r.get(12),
                rate_alert: r.get(13),
                falling: r.get(14),
            })
            .collect();
        let rain_rules = client
            .query(
                "SELECT sensor_key, extract(epoch FROM window_length)::float8, more_than_mm, severity FROM rain_rules ORDER BY sensor_key, window_length",
                &[],
            )
            .await
            .context("loading rain rules")?
            .iter()
            .map(|r| {
                Ok(RainRuleRow {
                    sensor_key: r.get(0),
                    window: duration(r.get(1)),
                    more_than_mm: r.get(2),
                    severity: severity(r, 3)?,
                })
            })
            .collect::<Result<_>>()?;
        Ok(FloodSetup {
            areas,
            links,
            thresholds,
            rain_rules,
        })
    }

    /// Creates or replaces a sensor's quality rule, with an audit entry, announced on
    /// [`Channel::FloodSetupChanged`] (the channel analytics reload their setup on).
    pub async fn put_quality_rule(
        &self,
        rule: &QualityRuleRow,
        audit: &crate::audit::Audit,
    ) -> Result<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.context("begin quality rule")?;
        tx.execute(
            "INSERT INTO quality_rules (sensor_key, plausible_low, plausible_high, spike_floor, stuck_run) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (sensor_key) DO UPDATE SET \
             plausible_low = EXCLUDED.plausible_low, plausible_high = EXCLUDED.plausible_high, \
             spike_floor = EXCLUDED.spike_floor, stuck_run = EXCLUDED.stuck_run, updated_at = now()",
            &[
                &rule.sensor_key,
                &rule.plausible_low,
                &rule.plausible_high,
                &rule.spike_floor,
                &rule.stuck_run,
            ],
        )
        .await
        .context("storing a quality rule")?;
        crate::audit::commit_change(tx, audit, Notice::FloodSetupChanged).await
    }

    /// Every quality rule, by sensor key.
    pub async fn quality_rules(&self) -> Result<Vec<QualityRuleRow>> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT sensor_key, plausible_low, plausible_high, spike_floor, stuck_run \
                 FROM quality_rules ORDER BY sensor_key",
                &[],
            )
            .await
            .context("reading quality rules")?;
        Ok(rows
            .iter()
            .map(|r| QualityRuleRow {
                sensor_key: r.get(0),
                plausible_low: r.get(1),
                plausible_high: r.get(2),
                spike_floor: r.get(3),
                stuck_run: r.get(4),
            })
            .collect())
    }
}
