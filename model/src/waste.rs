//! Waste and materials: the European List of Waste codes Tidemark knows (Commission Decision
//! 2000/532/EC as amended by Decision 2014/955/EU): chapter 15 01 (separately collected packaging)
//! and chapter 20 (municipal wastes), the chapters municipal waste statistics are reported in; an
//! asterisk marks hazardous waste. Then the treatments of the waste hierarchy, and the statistics
//! made of material-flow records: tonnes by treatment, the recycling rate as the EU counts it for
//! municipal waste (prepared for reuse plus recycled, over generated), per capita figures, and the
//! flows from municipality through fraction to treatment for a Sankey diagram.

use std::collections::BTreeMap;

/// One code of the list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WasteCode {
    /// As the list writes it: `20 01 01`, with `*` for hazardous waste.
    pub code: &'static str,
    pub name: &'static str,
}

impl WasteCode {
    pub fn hazardous(&self) -> bool {
        self.code.ends_with('*')
    }
}

const fn c(code: &'static str, name: &'static str) -> WasteCode {
    WasteCode { code, name }
}

/// The codes, in list order.
pub const LIST: &[WasteCode] = &[
    c("15 01 01", "paper and cardboard packaging"),
    c("15 01 02", "plastic packaging"),
    c("15 01 03", "wooden packaging"),
    c("15 01 04", "metallic packaging"),
    c("15 01 05", "composite packaging"),
    c("15 01 06", "mixed packaging"),
    c("15 01 07", "glass packaging"),
    c("15 01 09", "textile packaging"),
    c("15 01 10*", "packaging containing residues of or contaminated by hazardous substances"),
    c("15 01 11*", "metallic packaging containing a hazardous solid porous matrix"),
    c("20 01 01", "paper and cardboard"),
    c("20 01 02", "glass"),
    c("20 01 08", "biodegradable kitchen and canteen waste"),
    c("20 01 10", "clothes"),
    c("20 01 11", "textiles"),
    c("20 01 13*", "solvents"),
    c("20 01 14*", "acids"),
    c("20 01 15*", "alkalines"),
    c("20 01 17*", "photochemicals"),
    c("20 01 19*", "pesticides"),
    c("20 01 21*", "fluorescent tubes and other mercury-containing waste"),
    c("20 01 23*", "discarded equipment containing chlorofluorocarbons"),
    c("20 01 25", "edible oil and fat"),
    c("20 01 26*", "oil and fat other than those in 20 01 25"),
    c("20 01 27*", "paint, inks, adhesives and resins containing hazardous substances"),
    c("20 01 28", "paint, inks, adhesives and resins other than those in 20 01 27"),
    c("20 01 29*", "detergents containing hazardous substances"),
    c("20 01 30", "detergents other than those in 20 01 29"),
    c("20 01 31*", "cytotoxic and cytostatic medicines"),
    c("20 01 32", "medicines other than those in 20 01 31"),
    c("20 01 33*", "batteries and accumulators containing hazardous batteries"),
    c("20 01 34", "batteries and accumulators other than those in 20 01 33"),
    c("20 01 35*", "discarded electrical and electronic equipment containing hazardous components"),
    c("20 01 36", "discarded electrical and electronic equipment other than those in 20 01 21, 20 01 23 and 20 01 35"),
    c("20 01 37*", "wood containing hazardous substances"),
    c("20 01 38", "wood other than that in 20 01 37"),
    c("20 01 39", "plastics"),
    c("20 01 40", "metals"),
    c("20 01 41", "wastes from chimney sweeping"),
    c("20 01 99", "other fractions not otherwise specified"),
    c("20 02 01", "biodegradable waste"),
    c("20 02 02", "soil and stones"),
    c("20 02 03", "other non-biodegradable wastes"),
    c("20 03 01", "mixed municipal waste"),
    c("20 03 02", "waste from markets"),
    c("20 03 03", "street-cleaning residues"),
    c("20 03 04", "septic tank sludge"),
    c("20 03 06", "waste from sewage cleaning"),
    c("20 03 07", "bulky waste"),
    c("20 03 99", "municipal wastes not otherwise specified"),
];

/// The code as the list writes it, from `20 01 01`, `200101` or `20 01 21*` (the asterisk
/// optional); `None` for a code not in [`LIST`].
pub fn lookup(code: &str) -> Option<&'static WasteCode> {
    let digits: String = code
        .trim()
        .trim_end_matches('*')
        .chars()
        .filter(|c| *c != ' ')
        .collect();
    if digits.len() != 6 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    LIST.iter()
        .find(|w| w.code.trim_end_matches('*').replace(' ', "") == digits)
}

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
        self.tonnes.values().fold(0.0, |sum, t| sum + t)
    }

    /// Prepared for reuse plus recycled, over generated; `None` when nothing was generated.
    pub fn recycling_rate(&self) -> Option<f64> {
        let generated = self.generated();
        (generated > 0.0).then(|| {
            self.tonnes
                .iter()
                .filter(|(t, _)| t.counts_as_recycled())
                // Folded from +0.0: an empty float sum is -0.0, which would print as "-0".
                .fold(0.0, |sum, (_, w)| sum + w)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_found_however_they_are_spaced() {
        for (given, found) in [
            ("20 01 01", Some("20 01 01")),
            ("200101", Some("20 01 01")),
            (" 20 01 39 ", Some("20 01 39")),
            ("20 01 21", Some("20 01 21*")),
            ("20 01 21*", Some("20 01 21*")),
            ("15 01 02", Some("15 01 02")),
            ("20 01 03", None),
            ("17 01 01", None),
            ("2001", None),
            ("", None),
        ] {
            assert_eq!(lookup(given).map(|w| w.code), found, "{given:?}");
        }
        assert!(lookup("20 01 33").unwrap().hazardous());
        assert!(!lookup("20 03 01").unwrap().hazardous());
        let mut codes: Vec<&str> = LIST.iter().map(|w| w.code).collect();
        codes.dedup();
        assert_eq!(codes.len(), LIST.len(), "no code twice");
    }

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
                (Some(g), Some(w)) => {
                    assert!((g - w).abs() < 1e-12, "{records:?}");
                    assert!(g.is_sign_positive(), "{records:?}: {g}");
                }
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
    fn treatments_are_named() {
        for t in Treatment::ALL {
            assert_eq!(Treatment::parse(t.name()), Some(t));
        }
        assert_eq!(Treatment::parse("incineration"), None);
    }
}
