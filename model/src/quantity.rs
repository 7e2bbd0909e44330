//! What a sensor measures: its canonical unit and the physical range outside which a value is absurd.
//!
//! The ranges reject values no sensor of the kind can report (a sign error, a unit error, a broken
//! probe), not unusual ones: a spike within the range is the analytics' data-quality filters' job.

use crate::unit::Unit;
use std::fmt;

/// What each one is, in a sentence: [`Quantity::description`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Quantity {
    WaterLevel,
    SeaLevel,
    GroundwaterLevel,
    SewerLevel,
    RiverFlow,
    Rainfall,
    EnergyImport,
    EnergyExport,
    Power,
    HeatEnergy,
    WaterFlow,
    FillLevel,
    Weight,
    Temperature,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown quantity {0:?}")]
pub struct UnknownQuantity(pub String);

impl Quantity {
    pub const ALL: [Quantity; 14] = [
        Quantity::WaterLevel,
        Quantity::SeaLevel,
        Quantity::GroundwaterLevel,
        Quantity::SewerLevel,
        Quantity::RiverFlow,
        Quantity::Rainfall,
        Quantity::EnergyImport,
        Quantity::EnergyExport,
        Quantity::Power,
        Quantity::HeatEnergy,
        Quantity::WaterFlow,
        Quantity::FillLevel,
        Quantity::Weight,
        Quantity::Temperature,
    ];

    /// The name used in configuration files, the database and the API.
    pub fn name(self) -> &'static str {
        self.spec().0
    }

    pub fn parse(name: &str) -> Result<Quantity, UnknownQuantity> {
        Quantity::ALL
            .into_iter()
            .find(|q| q.name() == name)
            .ok_or_else(|| UnknownQuantity(name.to_owned()))
    }

    /// What the quantity is, in a sentence.
    pub fn description(self) -> &'static str {
        match self {
            Quantity::WaterLevel => "River or lake stage above the gauge datum.",
            Quantity::SeaLevel => "Sea level above the national datum.",
            Quantity::GroundwaterLevel => {
                "Groundwater head above the national datum (negative below it)."
            }
            Quantity::SewerLevel => "Water level in a sewer or storm drain above its invert.",
            Quantity::RiverFlow => "Discharge of a river.",
            Quantity::Rainfall => "Rainfall depth in the reporting interval.",
            Quantity::EnergyImport => "Cumulative imported electrical energy (meter register).",
            Quantity::EnergyExport => "Cumulative exported electrical energy (meter register).",
            Quantity::Power => "Electrical power; negative when exporting.",
            Quantity::HeatEnergy => "Cumulative heat energy (district heating meter register).",
            Quantity::WaterFlow => "Volume flow in a water supply network (district meter).",
            Quantity::FillLevel => "Fill level of a waste container.",
            Quantity::Weight => "Weight (of a waste container's contents, a collection).",
            Quantity::Temperature => "Temperature of air, water or a heating flow.",
        }
    }

    /// The unit values are stored in.
    pub fn canonical_unit(self) -> Unit {
        self.spec().1
    }

    /// Inclusive physical range in the canonical unit.
    pub fn range(self) -> (f64, f64) {
        let (_, _, low, high) = self.spec();
        (low, high)
    }

    fn spec(self) -> (&'static str, Unit, f64, f64) {
        match self {
            // Stage rarely leaves -20..100 m of its datum; 100 m would be an unheard-of flood.
            Quantity::WaterLevel => ("water_level", Unit::Metre, -20.0, 100.0),
            // The highest storm surges recorded reach about 8 m; tides at most 16 m (Bay of Fundy).
            Quantity::SeaLevel => ("sea_level", Unit::Metre, -20.0, 20.0),
            // Heads range from deep mines to mountain aquifers.
            Quantity::GroundwaterLevel => ("groundwater_level", Unit::Metre, -1000.0, 5000.0),
            Quantity::SewerLevel => ("sewer_level", Unit::Metre, -5.0, 50.0),
            // The Amazon's highest discharge is about 3e5 m3/s.
            Quantity::RiverFlow => ("river_flow", Unit::CubicMetrePerSecond, 0.0, 300_000.0),
            // The world-record one-hour rainfall is 305 mm (WMO); an hourly or shorter interval stays below 500.
            Quantity::Rainfall => ("rainfall", Unit::Millimetre, 0.0, 500.0),
            Quantity::EnergyImport => ("energy_import", Unit::KilowattHour, 0.0, 1e12),
            Quantity::EnergyExport => ("energy_export", Unit::KilowattHour, 0.0, 1e12),
            // Large enough for a transmission area's load (West Denmark peaks near 3.4 GW).
            Quantity::Power => ("power", Unit::Kilowatt, -1e8, 1e8),
            Quantity::HeatEnergy => ("heat_energy", Unit::KilowattHour, 0.0, 1e12),
            Quantity::WaterFlow => ("water_flow", Unit::LitrePerSecond, -1e5, 1e5),
            // Ultrasonic fill sensors read above 100 % when a container overflows.
            Quantity::FillLevel => ("fill_level", Unit::Percent, 0.0, 150.0),
            Quantity::Weight => ("weight", Unit::Kilogram, 0.0, 100_000.0),
            // The coldest air recorded is -89 C; district heating supply stays below 150 C.
            Quantity::Temperature => ("temperature", Unit::Celsius, -90.0, 150.0),
        }
    }
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_ranges_are_ordered() {
        for q in Quantity::ALL {
            assert_eq!(Quantity::parse(q.name()), Ok(q));
            let (low, high) = q.range();
            assert!(low < high, "{q}");
        }
        assert!(Quantity::parse("flux_capacitance").is_err());
    }
}
