//! Units of measure and conversion between units of one dimension.
//!
//! Spellings follow the SenML units registry (RFC 8428 section 12.1 and its secondary units, RFC 8798)
//! where one exists, plus the everyday spellings of Tidemark JSON (`"degC"`, `"m3/h"`, `"t"`).

use std::fmt;

/// What a unit measures. Only units of the same dimension convert into each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dimension {
    Length,
    VolumeFlow,
    Energy,
    Power,
    Ratio,
    Mass,
    Temperature,
}

/// A unit Tidemark understands. Each converts to its dimension's base unit by
/// `base = value * factor + offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Unit {
    Metre,
    Centimetre,
    Millimetre,
    CubicMetrePerSecond,
    CubicMetrePerHour,
    LitrePerSecond,
    WattHour,
    KilowattHour,
    MegawattHour,
    Joule,
    Megajoule,
    Gigajoule,
    Watt,
    Kilowatt,
    Megawatt,
    Percent,
    /// SenML `/`: a ratio of 1.
    Fraction,
    Gram,
    Kilogram,
    Tonne,
    Celsius,
    Kelvin,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown unit {0:?}")]
pub struct UnknownUnit(pub String);

impl Unit {
    /// Every unit, for tables and documentation.
    pub const ALL: [Unit; 22] = [
        Unit::Metre,
        Unit::Centimetre,
        Unit::Millimetre,
        Unit::CubicMetrePerSecond,
        Unit::CubicMetrePerHour,
        Unit::LitrePerSecond,
        Unit::WattHour,
        Unit::KilowattHour,
        Unit::MegawattHour,
        Unit::Joule,
        Unit::Megajoule,
        Unit::Gigajoule,
        Unit::Watt,
        Unit::Kilowatt,
        Unit::Megawatt,
        Unit::Percent,
        Unit::Fraction,
        Unit::Gram,
        Unit::Kilogram,
        Unit::Tonne,
        Unit::Celsius,
        Unit::Kelvin,
    ];

    /// Parses a unit symbol. Accepts the SenML symbol and common aliases.
    pub fn parse(symbol: &str) -> Result<Unit, UnknownUnit> {
        let unit = match symbol {
            "m" => Unit::Metre,
            "cm" => Unit::Centimetre,
            "mm" => Unit::Millimetre,
            "m3/s" => Unit::CubicMetrePerSecond,
            "m3/h" => Unit::CubicMetrePerHour,
            "l/s" | "L/s" => Unit::LitrePerSecond,
            "Wh" => Unit::WattHour,
            "kWh" => Unit::KilowattHour,
            "MWh" => Unit::MegawattHour,
            "J" => Unit::Joule,
            "MJ" => Unit::Megajoule,
            "GJ" => Unit::Gigajoule,
            "W" => Unit::Watt,
            "kW" => Unit::Kilowatt,
            "MW" => Unit::Megawatt,
            "%" => Unit::Percent,
            "/" => Unit::Fraction,
            "g" => Unit::Gram,
            "kg" => Unit::Kilogram,
            "t" => Unit::Tonne,
            "Cel" | "degC" | "°C" => Unit::Celsius,
            "K" => Unit::Kelvin,
            other => return Err(UnknownUnit(other.to_owned())),
        };
        Ok(unit)
    }

    /// The unit's name in English and its QUDT unit URI, for catalogues that describe units
    /// (SensorThings' `unitOfMeasurement`).
    pub fn description(self) -> (&'static str, &'static str) {
        let (name, qudt) = match self {
            Unit::Metre => ("metre", "M"),
            Unit::Centimetre => ("centimetre", "CentiM"),
            Unit::Millimetre => ("millimetre", "MilliM"),
            Unit::CubicMetrePerSecond => ("cubic metre per second", "M3-PER-SEC"),
            Unit::CubicMetrePerHour => ("cubic metre per hour", "M3-PER-HR"),
            Unit::LitrePerSecond => ("litre per second", "L-PER-SEC"),
            Unit::WattHour => ("watt hour", "W-HR"),
            Unit::KilowattHour => ("kilowatt hour", "KiloW-HR"),
            Unit::MegawattHour => ("megawatt hour", "MegaW-HR"),
            Unit::Joule => ("joule", "J"),
            Unit::Megajoule => ("megajoule", "MegaJ"),
            Unit::Gigajoule => ("gigajoule", "GigaJ"),
            Unit::Watt => ("watt", "W"),
            Unit::Kilowatt => ("kilowatt", "KiloW"),
            Unit::Megawatt => ("megawatt", "MegaW"),
            Unit::Percent => ("percent", "PERCENT"),
            Unit::Fraction => ("ratio", "UNITLESS"),
            Unit::Gram => ("gram", "GM"),
            Unit::Kilogram => ("kilogram", "KiloGM"),
            Unit::Tonne => ("tonne", "TONNE"),
            Unit::Celsius => ("degree Celsius", "DEG_C"),
            Unit::Kelvin => ("kelvin", "K"),
        };
        (name, qudt)
    }

    /// The canonical symbol (the SenML one where SenML has it).
    pub fn symbol(self) -> &'static str {
        match self {
            Unit::Metre => "m",
            Unit::Centimetre => "cm",
            Unit::Millimetre => "mm",
            Unit::CubicMetrePerSecond => "m3/s",
            Unit::CubicMetrePerHour => "m3/h",
            Unit::LitrePerSecond => "l/s",
            Unit::WattHour => "Wh",
            Unit::KilowattHour => "kWh",
            Unit::MegawattHour => "MWh",
            Unit::Joule => "J",
            Unit::Megajoule => "MJ",
            Unit::Gigajoule => "GJ",
            Unit::Watt => "W",
            Unit::Kilowatt => "kW",
            Unit::Megawatt => "MW",
            Unit::Percent => "%",
            Unit::Fraction => "/",
            Unit::Gram => "g",
            Unit::Kilogram => "kg",
            Unit::Tonne => "t",
            Unit::Celsius => "Cel",
            Unit::Kelvin => "K",
        }
    }

    pub fn dimension(self) -> Dimension {
        self.to_base().0
    }

    /// The unit's dimension, and `(factor, offset)` such that `base = value * factor + offset`.
    /// Base units: m, m3/s, kWh, kW, %, kg, Cel.
    fn to_base(self) -> (Dimension, f64, f64) {
        use Dimension::*;
        match self {
            Unit::Metre => (Length, 1.0, 0.0),
            Unit::Centimetre => (Length, 0.01, 0.0),
            Unit::Millimetre => (Length, 0.001, 0.0),
            Unit::CubicMetrePerSecond => (VolumeFlow, 1.0, 0.0),
            Unit::CubicMetrePerHour => (VolumeFlow, 1.0 / 3600.0, 0.0),
            Unit::LitrePerSecond => (VolumeFlow, 0.001, 0.0),
            Unit::WattHour => (Energy, 0.001, 0.0),
            Unit::KilowattHour => (Energy, 1.0, 0.0),
            Unit::MegawattHour => (Energy, 1000.0, 0.0),
            Unit::Joule => (Energy, 1.0 / 3.6e6, 0.0),
            Unit::Megajoule => (Energy, 1.0 / 3.6, 0.0),
            Unit::Gigajoule => (Energy, 1000.0 / 3.6, 0.0),
            Unit::Watt => (Power, 0.001, 0.0),
            Unit::Kilowatt => (Power, 1.0, 0.0),
            Unit::Megawatt => (Power, 1000.0, 0.0),
            Unit::Percent => (Ratio, 1.0, 0.0),
            Unit::Fraction => (Ratio, 100.0, 0.0),
            Unit::Gram => (Mass, 0.001, 0.0),
            Unit::Kilogram => (Mass, 1.0, 0.0),
            Unit::Tonne => (Mass, 1000.0, 0.0),
            Unit::Celsius => (Temperature, 1.0, 0.0),
            Unit::Kelvin => (Temperature, 1.0, -273.15),
        }
    }

    /// Converts `value` from `self` to `target`, or `None` when the dimensions differ.
    pub fn convert(self, value: f64, target: Unit) -> Option<f64> {
        let (from_dim, from_factor, from_offset) = self.to_base();
        let (to_dim, to_factor, to_offset) = target.to_base();
        if from_dim != to_dim {
            return None;
        }
        if self == target {
            return Some(value);
        }
        let base = value * from_factor + from_offset;
        Some((base - to_offset) / to_factor)
    }
}

impl fmt::Display for Unit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.symbol())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
    }

    #[test]
    fn conversions() {
        let cases = [
            (Unit::Centimetre, 123.0, Unit::Metre, Some(1.23)),
            (Unit::Millimetre, 1500.0, Unit::Metre, Some(1.5)),
            (Unit::Metre, 0.016, Unit::Millimetre, Some(16.0)),
            (Unit::WattHour, 2500.0, Unit::KilowattHour, Some(2.5)),
            (Unit::MegawattHour, 1.2, Unit::KilowattHour, Some(1200.0)),
            (Unit::Gigajoule, 3.6, Unit::KilowattHour, Some(1000.0)),
            (Unit::Megawatt, 3.424, Unit::Kilowatt, Some(3424.0)),
            (
                Unit::CubicMetrePerHour,
                3.6,
                Unit::LitrePerSecond,
                Some(1.0),
            ),
            (Unit::Fraction, 0.5, Unit::Percent, Some(50.0)),
            (Unit::Tonne, 0.25, Unit::Kilogram, Some(250.0)),
            (Unit::Kelvin, 273.15, Unit::Celsius, Some(0.0)),
            (Unit::Celsius, 20.0, Unit::Kelvin, Some(293.15)),
            (Unit::Metre, 1.0, Unit::Kilogram, None),
            (Unit::KilowattHour, 1.0, Unit::Kilowatt, None),
        ];
        for (from, value, to, expected) in cases {
            let got = from.convert(value, to);
            match (got, expected) {
                (Some(g), Some(e)) => assert!(close(g, e), "{from} {value} -> {to}: {g} != {e}"),
                (None, None) => {}
                _ => panic!("{from} {value} -> {to}: got {got:?}, expected {expected:?}"),
            }
        }
    }

    #[test]
    fn every_symbol_round_trips() {
        for unit in Unit::ALL {
            assert_eq!(Unit::parse(unit.symbol()), Ok(unit));
            assert_eq!(unit.convert(42.0, unit), Some(42.0));
        }
        assert_eq!(Unit::parse("°C"), Ok(Unit::Celsius));
        assert_eq!(Unit::parse("furlong"), Err(UnknownUnit("furlong".into())));
    }
}
