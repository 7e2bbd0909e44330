//! Material-flow records and the statistics made from them: tonnes by treatment, the recycling rate
//! as the EU counts it for municipal waste (prepared for reuse plus recycled, over generated), per
//! capita figures, and the flows from municipality through fraction to treatment for a Sankey
//! diagram.

use std::collections::BTreeMap;

/// What happened to the waste, in the waste hierarchy's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Treatment {
    PreparingForReuse,
    Recycling,
    /// Other recovery, energy recovery included.
    OtherRecovery,
    Landfill,
}

impl Treatment {
    pub const ALL: [Treatment; 4] = [
        Treatment::PreparingForReuse,
        Treatment::Recycling,
        Treatment::OtherRecovery,
        Treatment::Landfill,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Treatment::PreparingForReuse => "preparing_for_reuse",
            Treatment::Recycling => "recycling",
            Treatment::OtherRecovery => "other_recovery",
            Treatment::Landfill => "landfill",
        }
    }

    pub fn parse(name: &str) -> Option<Treatment> {
        Treatment::ALL.into_iter().find(|t| t.name() == name)
    }

    /// Counted as recycled in the EU municipal waste recycling rate.
    pub fn counts_as_recycled(self) -> bool {
        matches!(self, Treatment::PreparingForReuse | Treatment::Recycling)
    }
}

/// One posted record, as the statistics need it.
#[derive(Debug, Clone, PartialEq)]
pub struct FlowRecord {
    pub municipality: String,
    /// EU List of Waste code, such as `20 01 01`.
    pub waste_code: String,
    pub tonnes: f64,
    pub treatment: Treatment,
}

/// Tonnes by treatment, and the recycling rate made of them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TreatmentSplit {
    pub tonnes: BTreeMap<Treatment, f64>,
}

impl TreatmentSplit {
    pub fn of<'a>(records: impl IntoIterator<Item = &'a FlowRecord>) -> TreatmentSplit {
        let mut tonnes = BTreeMap::new();
        for r in records {
            *tonnes.entry(r.treatment).or_insert(0.0) += r.tonnes;
        }
        TreatmentSplit { tonnes }
    }

    /// All treated waste: what was generated and collected.
    pub fn generated(&self) -> f64 {
        self.tonnes.values().sum()
    }

    /// Prepared for reuse plus recycled, over generated; `None` when nothing was generated.
    pub fn recycling_rate(&self) -> Option<f64> {
        let generated = self.generated();
        (generated > 0.0).then(|| {
            self.tonnes
                .iter()
                .filter(|(t, _)| t.counts_as_recycled())
                .map(|(_, w)| w)
                .sum::<f64>()
                / generated
        })
    }

    /// Kilograms per inhabitant.
    pub fn per_capita_kg(&self, population: u64) -> Option<f64> {
        (population > 0).then(|| self.generated() * 1000.0 / population as f64)
    }
}

/// One link of a Sankey diagram, in tonnes.
#[derive(Debug, Clone, PartialEq)]
pub struct FlowLink {
    pub source: String,
    pub target: String,
    pub tonnes: f64,
}

/// The flows municipality → fraction (waste code) → treatment, summed, in a stable order.
pub fn sankey(records: &[FlowRecord]) -> Vec<FlowLink> {
    let mut links: BTreeMap<(String, String), f64> = BTreeMap::new();
    for r in records {
        *links
            .entry((
                format!("municipality:{}", r.municipality),
                format!("waste:{}", r.waste_code),
            ))
            .or_insert(0.0) += r.tonnes;
        *links
            .entry((
                format!("waste:{}", r.waste_code),
                format!("treatment:{}", r.treatment.name()),
            ))
            .or_insert(0.0) += r.tonnes;
    }
    links
        .into_iter()
        .map(|((source, target), tonnes)| FlowLink {
            source,
            target,
            tonnes,
        })
        .collect()
}

/// Whether a string is a well-formed EU List of Waste code: three pairs of digits, with spaces
/// (`20 01 01`) or without (`200101`), and an optional asterisk for hazardous waste.
pub fn is_waste_code(code: &str) -> bool {
    let digits: String = code.trim_end_matches('*').split(' ').collect();
    let spaced = code.trim_end_matches('*').split(' ').count();
    digits.len() == 6 && digits.bytes().all(|b| b.is_ascii_digit()) && (spaced == 1 || spaced == 3)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(municipality: &str, code: &str, tonnes: f64, treatment: Treatment) -> FlowRecord {
        FlowRecord {
            municipality: municipality.into(),
            waste_code: code.into(),
            tonnes,
            treatment,
        }
    }

    #[test]
    fn recycling_rate_is_reuse_and_recycling_over_everything_generated() {
        use Treatment::*;
        // (records, expected rate)
        let cases: [(Vec<FlowRecord>, Option<f64>); 4] = [
            (
                vec![
                    record("0751", "20 01 01", 40.0, Recycling),
                    record("0751", "20 03 01", 50.0, OtherRecovery),
                    record("0751", "20 01 38", 5.0, PreparingForReuse),
                    record("0751", "20 03 01", 5.0, Landfill),
                ],
                Some(0.45),
            ),
            (
                vec![record("0751", "20 03 01", 10.0, OtherRecovery)],
                Some(0.0),
            ),
            (vec![record("0751", "20 01 02", 10.0, Recycling)], Some(1.0)),
            (vec![], None),
        ];
        for (records, want) in cases {
            let split = TreatmentSplit::of(&records);
            match (split.recycling_rate(), want) {
                (Some(g), Some(w)) => assert!((g - w).abs() < 1e-12, "{records:?}"),
                (got, want) => assert_eq!(got, want),
            }
        }
        let split = TreatmentSplit::of(&[record("0751", "20 01 01", 360.0, Recycling)]);
        assert_eq!(split.per_capita_kg(360_000), Some(1.0));
        assert_eq!(split.per_capita_kg(0), None);
    }

    #[test]
    fn sankey_links_run_from_municipality_through_fraction_to_treatment() {
        use Treatment::*;
        let records = [
            record("0751", "20 01 01", 40.0, Recycling),
            record("0751", "20 01 01", 10.0, OtherRecovery),
            record("0101", "20 01 01", 5.0, Recycling),
        ];
        let links: Vec<(String, String, f64)> = sankey(&records)
            .into_iter()
            .map(|l| (l.source, l.target, l.tonnes))
            .collect();
        assert_eq!(
            links,
            [
                ("municipality:0101".into(), "waste:20 01 01".into(), 5.0),
                ("municipality:0751".into(), "waste:20 01 01".into(), 50.0),
                (
                    "waste:20 01 01".into(),
                    "treatment:other_recovery".into(),
                    10.0
                ),
                ("waste:20 01 01".into(), "treatment:recycling".into(), 45.0),
            ]
        );
    }

    #[test]
    fn waste_codes_and_treatments_are_recognised() {
        for (code, ok) in [
            ("20 01 01", true),
            ("200101", true),
            ("20 01 21*", true),
            ("20 0101", false),
            ("2001", false),
            ("20 01 0a", false),
            ("", false),
        ] {
            assert_eq!(is_waste_code(code), ok, "{code:?}");
        }
        for t in Treatment::ALL {
            assert_eq!(Treatment::parse(t.name()), Some(t));
        }
        assert_eq!(Treatment::parse("incineration"), None);
    }
}
