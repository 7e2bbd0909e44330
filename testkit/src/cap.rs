//! The rules of CAP 1.2 (OASIS Standard, 2010) that a message can be checked against without
//! the schema file: the namespace, required elements in their order, the value lists,
//! date-times with an explicit offset, identifier characters, `references` triples, and closed
//! polygons of at least four points with coordinates in range.

use quick_xml::events::Event;
use quick_xml::Reader;

/// The namespace every CAP 1.2 alert declares.
const CAP_NAMESPACE: &str = "urn:oasis:names:tc:emergency:cap:1.2";

/// An element of a parsed document.
#[derive(Debug, Default, Clone)]
pub struct Element {
    pub name: String,
    pub attributes: Vec<(String, String)>,
    pub children: Vec<Element>,
    pub text: String,
}

impl Element {
    pub fn child(&self, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.name == name)
    }

    pub fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Element> + 'a {
        self.children.iter().filter(move |c| c.name == name)
    }

    pub fn attribute(&self, name: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

fn predefined(entity: &str) -> Option<char> {
    Some(match entity {
        "amp" => '&',
        "lt" => '<',
        "gt" => '>',
        "quot" => '"',
        "apos" => '\'',
        _ => return None,
    })
}

/// Parses a document into its root element.
pub fn parse(xml: &str) -> Result<Element, String> {
    let mut reader = Reader::from_str(xml);
    reader.config_mut().trim_text(true);
    let mut stack: Vec<Element> = vec![Element::default()];
    loop {
        let event = reader.read_event().map_err(|e| {
            format!(
                "not well-formed XML at byte {}: {e}",
                reader.buffer_position()
            )
        })?;
        let (start, is_empty) = match event {
            Event::Start(start) => (start, false),
            Event::Empty(start) => (start, true),
            Event::Eof => break,
            other => {
                text_event(other, &mut stack)?;
                continue;
            }
        };
        let mut element = Element {
            name: String::from_utf8_lossy(start.name().as_ref()).into_owned(),
            ..Element::default()
        };
        for attribute in start.attributes() {
            let attribute = attribute.map_err(|e| e.to_string())?;
            element.attributes.push((
                String::from_utf8_lossy(attribute.key.as_ref()).into_owned(),
                attribute
                    .unescape_value()
                    .map_err(|e| e.to_string())?
                    .into_owned(),
            ));
        }
        let parent = stack.last_mut().expect("the document root");
        if is_empty {
            parent.children.push(element);
        } else {
            stack.push(element);
        }
    }
    finish(stack)
}

/// Text, references and end tags.
fn text_event(event: Event<'_>, stack: &mut Vec<Element>) -> Result<(), String> {
    match event {
        Event::Text(text) => {
            let text = text.decode().map_err(|e| e.to_string())?;
            stack
                .last_mut()
                .expect("the document root")
                .text
                .push_str(&text);
        }
        Event::GeneralRef(reference) => {
            let resolved = match reference.resolve_char_ref().map_err(|e| e.to_string())? {
                Some(c) => c,
                None => {
                    let name = reference.decode().map_err(|e| e.to_string())?;
                    predefined(&name).ok_or(format!("unknown entity &{name};"))?
                }
            };
            stack
                .last_mut()
                .expect("the document root")
                .text
                .push(resolved);
        }
        Event::End(_) => {
            let element = stack.pop().expect("quick-xml checks end tags");
            stack
                .last_mut()
                .ok_or("an end tag without its start")?
                .children
                .push(element);
        }
        _ => {}
    }
    Ok(())
}

fn finish(mut stack: Vec<Element>) -> Result<Element, String> {
    let mut document = stack.pop().ok_or("an unclosed element")?;
    if !stack.is_empty() {
        return Err("an unclosed element".to_owned());
    }
    if document.children.len() != 1 {
        return Err("a document has exactly one root element".to_owned());
    }
    Ok(document.children.remove(0))
}

const STATUS: &[&str] = &["Actual", "Exercise", "System", "Test", "Draft"];
const MSG_TYPE: &[&str] = &["Alert", "Update", "Cancel", "Ack", "Error"];
const SCOPE: &[&str] = &["Public", "Restricted", "Private"];
const CATEGORY: &[&str] = &[
    "Geo",
    "Met",
    "Safety",
    "Security",
    "Rescue",
    "Fire",
    "Health",
    "Env",
    "Transport",
    "Infra",
    "CBRNE",
    "Other",
];
const RESPONSE_TYPE: &[&str] = &[
    "Shelter", "Evacuate", "Prepare", "Execute", "Avoid", "Monitor", "Assess", "AllClear", "None",
];
const URGENCY: &[&str] = &["Immediate", "Expected", "Future", "Past", "Unknown"];
const SEVERITY: &[&str] = &["Extreme", "Severe", "Moderate", "Minor", "Unknown"];
const CERTAINTY: &[&str] = &["Observed", "Likely", "Possible", "Unlikely", "Unknown"];

/// The element order of `alert` (CAP 1.2 section 3.2.1), with (min, max) occurrences.
const ALERT_ORDER: &[(&str, usize, usize)] = &[
    ("identifier", 1, 1),
    ("sender", 1, 1),
    ("sent", 1, 1),
    ("status", 1, 1),
    ("msgType", 1, 1),
    ("source", 0, 1),
    ("scope", 1, 1),
    ("restriction", 0, 1),
    ("addresses", 0, 1),
    ("code", 0, usize::MAX),
    ("note", 0, 1),
    ("references", 0, 1),
    ("incidents", 0, 1),
    ("info", 0, usize::MAX),
];

/// The element order of `info` (section 3.2.2).
const INFO_ORDER: &[(&str, usize, usize)] = &[
    ("language", 0, 1),
    ("category", 1, usize::MAX),
    ("event", 1, 1),
    ("responseType", 0, usize::MAX),
    ("urgency", 1, 1),
    ("severity", 1, 1),
    ("certainty", 1, 1),
    ("audience", 0, 1),
    ("eventCode", 0, usize::MAX),
    ("effective", 0, 1),
    ("onset", 0, 1),
    ("expires", 0, 1),
    ("senderName", 0, 1),
    ("headline", 0, 1),
    ("description", 0, 1),
    ("instruction", 0, 1),
    ("web", 0, 1),
    ("contact", 0, 1),
    ("parameter", 0, usize::MAX),
    ("resource", 0, usize::MAX),
    ("area", 0, usize::MAX),
];

/// The element order of `area` (section 3.2.4).
const AREA_ORDER: &[(&str, usize, usize)] = &[
    ("areaDesc", 1, 1),
    ("polygon", 0, usize::MAX),
    ("circle", 0, usize::MAX),
    ("geocode", 0, usize::MAX),
    ("altitude", 0, 1),
    ("ceiling", 0, 1),
];

fn check_order(element: &Element, order: &[(&str, usize, usize)], problems: &mut Vec<String>) {
    let mut position = 0;
    let mut counts = vec![0usize; order.len()];
    for child in &element.children {
        match order.iter().position(|(name, ..)| *name == child.name) {
            Some(index) if index >= position => {
                position = index;
                counts[index] += 1;
            }
            Some(_) => problems.push(format!(
                "<{}> is out of order in <{}>",
                child.name, element.name
            )),
            None => problems.push(format!(
                "<{}> is not a CAP 1.2 element of <{}>",
                child.name, element.name
            )),
        }
    }
    for ((name, min, max), count) in order.iter().zip(counts) {
        if count < *min {
            problems.push(format!("<{}> needs <{name}>", element.name));
        }
        if count > *max {
            problems.push(format!("<{}> has <{name}> more than once", element.name));
        }
    }
}

fn check_value(element: &Element, name: &str, allowed: &[&str], problems: &mut Vec<String>) {
    for child in element.all(name) {
        if !allowed.contains(&child.text.as_str()) {
            problems.push(format!(
                "<{name}> {:?} is not one of {allowed:?}",
                child.text
            ));
        }
    }
}

/// CAP's dateTime: `YYYY-MM-DDThh:mm:ss` then `+hh:mm` or `-hh:mm`; "Z" is not allowed.
pub fn is_cap_time(text: &str) -> bool {
    let b = text.as_bytes();
    let digits = |range: std::ops::Range<usize>| range.clone().all(|i| b[i].is_ascii_digit());
    b.len() == 25
        && digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && b[10] == b'T'
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19)
        && (b[19] == b'+' || b[19] == b'-')
        && digits(20..22)
        && b[22] == b':'
        && digits(23..25)
        && chrono::DateTime::parse_from_rfc3339(text).is_ok()
}

fn check_identifier(what: &str, text: &str, problems: &mut Vec<String>) {
    if text.is_empty() || text.contains([' ', ',', '<', '&']) {
        problems.push(format!(
            "<{what}> {text:?} must be non-empty without spaces, commas, < or &"
        ));
    }
}

fn check_polygon(text: &str, problems: &mut Vec<String>) {
    let points: Vec<Option<(f64, f64)>> = text
        .split_whitespace()
        .map(|pair| {
            let (lat, lon) = pair.split_once(',')?;
            Some((lat.parse().ok()?, lon.parse().ok()?))
        })
        .collect();
    if points.iter().any(Option::is_none) {
        problems.push("<polygon> must be space-separated lat,lon pairs".to_owned());
        return;
    }
    let points: Vec<(f64, f64)> = points.into_iter().flatten().collect();
    if points.len() < 4 {
        problems.push("<polygon> needs at least four points".to_owned());
    }
    if points.first() != points.last() {
        problems.push("<polygon> must end at its first point".to_owned());
    }
    if points
        .iter()
        .any(|(lat, lon)| !(-90.0..=90.0).contains(lat) || !(-180.0..=180.0).contains(lon))
    {
        problems.push("<polygon> has a coordinate out of range (lat,lon order?)".to_owned());
    }
}

/// Every rule the message breaks; empty when it is valid.
pub fn problems(xml: &str) -> Vec<String> {
    let alert = match parse(xml) {
        Ok(root) => root,
        Err(e) => return vec![e],
    };
    let mut problems = Vec::new();
    if alert.name != "alert" {
        problems.push(format!("the root element is <{}>, not <alert>", alert.name));
        return problems;
    }
    if alert.attribute("xmlns") != Some(CAP_NAMESPACE) {
        problems.push(format!(
            "<alert> must be in the {} namespace",
            CAP_NAMESPACE
        ));
    }
    check_order(&alert, ALERT_ORDER, &mut problems);
    for name in ["identifier", "sender"] {
        if let Some(e) = alert.child(name) {
            check_identifier(name, &e.text, &mut problems);
        }
    }
    if let Some(sent) = alert.child("sent") {
        if !is_cap_time(&sent.text) {
            problems.push(format!("<sent> {:?} is not a CAP dateTime", sent.text));
        }
    }
    check_value(&alert, "status", STATUS, &mut problems);
    check_value(&alert, "msgType", MSG_TYPE, &mut problems);
    check_value(&alert, "scope", SCOPE, &mut problems);
    let scope = alert.child("scope").map(|s| s.text.as_str());
    if scope == Some("Restricted") && alert.child("restriction").is_none() {
        problems.push("a Restricted alert needs <restriction>".to_owned());
    }
    if scope == Some("Private") && alert.child("addresses").is_none() {
        problems.push("a Private alert needs <addresses>".to_owned());
    }
    let msg_type = alert.child("msgType").map(|s| s.text.as_str());
    match alert.child("references") {
        Some(references) => {
            for triple in references.text.split_whitespace() {
                let parts: Vec<&str> = triple.split(',').collect();
                if parts.len() != 3 || !is_cap_time(parts[2]) {
                    problems.push(format!(
                        "<references> entry {triple:?} is not sender,identifier,sent"
                    ));
                }
            }
        }
        None if matches!(msg_type, Some("Update" | "Cancel")) => {
            problems.push("an Update or Cancel must reference the earlier message".to_owned());
        }
        None => {}
    }
    for info in alert.all("info") {
        check_order(info, INFO_ORDER, &mut problems);
        check_value(info, "category", CATEGORY, &mut problems);
        check_value(info, "responseType", RESPONSE_TYPE, &mut problems);
        check_value(info, "urgency", URGENCY, &mut problems);
        check_value(info, "severity", SEVERITY, &mut problems);
        check_value(info, "certainty", CERTAINTY, &mut problems);
        for name in ["effective", "onset", "expires"] {
            if let Some(e) = info.child(name) {
                if !is_cap_time(&e.text) {
                    problems.push(format!("<{name}> {:?} is not a CAP dateTime", e.text));
                }
            }
        }
        for area in info.all("area") {
            check_order(area, AREA_ORDER, &mut problems);
            for polygon in area.all("polygon") {
                check_polygon(&polygon.text, &mut problems);
            }
            for geocode in area.all("geocode") {
                if geocode.child("valueName").is_none() || geocode.child("value").is_none() {
                    problems.push("<geocode> needs <valueName> and <value>".to_owned());
                }
            }
        }
    }
    problems
}
