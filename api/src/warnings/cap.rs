//! CAP 1.2 (OASIS Common Alerting Protocol, `urn:oasis:names:tc:emergency:cap:1.2`) messages for
//! warning events, the Atom feed of current alerts that public aggregators poll, and a checker of
//! the CAP 1.2 rules that the tests (and anyone consuming our feed) can run on a message.
//!
//! One CAP message per warning event: a raise is an `Alert`, a change, acknowledgement or
//! stale/fresh report an `Update`, a lift a `Cancel`; updates and cancels reference every earlier
//! message of the same warning. Identifiers are stable: the same event always gives the same
//! identifier and `sent` time.

use chrono::{DateTime, Duration, FixedOffset, Utc};
use quick_xml::events::{BytesDecl, BytesEnd, BytesStart, BytesText, Event};
use quick_xml::Writer;
use tidemark_model::warning::{Category, EventKind, Severity};
use tidemark_store::events::WarningEvent;

pub const CAP_NAMESPACE: &str = "urn:oasis:names:tc:emergency:cap:1.2";
pub const ATOM_NAMESPACE: &str = "http://www.w3.org/2005/Atom";
pub const CAP_CONTENT_TYPE: &str = "application/cap+xml";

/// Who sends, and how long an alert stays valid without an update.
#[derive(Debug, Clone)]
pub struct CapSettings {
    /// CAP `sender`: globally unique, no spaces, commas or `<` `&`.
    pub sender: String,
    /// Base URL of the public API, for links.
    pub public_url: String,
    /// An alert expires this long after it was sent unless updated.
    pub expires_after: std::time::Duration,
}

/// Whether an event is published as CAP (delivery bookkeeping is not).
pub fn is_public(event: &WarningEvent) -> bool {
    event.kind != "undelivered"
}

/// The CAP identifier of an event.
pub fn identifier(event_id: i64) -> String {
    format!("tidemark-warning-event-{event_id}")
}

/// Danish local time with its explicit offset, to the second: CAP forbids "Z" and fractions.
pub fn cap_time(instant: DateTime<Utc>) -> String {
    let hours = if tidemark_model::time::is_summer_time(instant) {
        2
    } else {
        1
    };
    let offset = FixedOffset::east_opt(hours * 3600).expect("a whole-hour offset is valid");
    instant
        .with_timezone(&offset)
        .format("%Y-%m-%dT%H:%M:%S%:z")
        .to_string()
}

struct Xml(Writer<Vec<u8>>);

impl Xml {
    fn new() -> Xml {
        let mut writer = Writer::new_with_indent(Vec::new(), b' ', 2);
        // Writing into a Vec cannot fail.
        let _ = writer.write_event(Event::Decl(BytesDecl::new("1.0", Some("UTF-8"), None)));
        Xml(writer)
    }

    fn open(&mut self, name: &str, attributes: &[(&str, &str)]) {
        let start = BytesStart::new(name).with_attributes(attributes.iter().copied());
        let _ = self.0.write_event(Event::Start(start));
    }

    fn close(&mut self, name: &str) {
        let _ = self.0.write_event(Event::End(BytesEnd::new(name)));
    }

    fn empty(&mut self, name: &str, attributes: &[(&str, &str)]) {
        let start = BytesStart::new(name).with_attributes(attributes.iter().copied());
        let _ = self.0.write_event(Event::Empty(start));
    }

    fn text(&mut self, name: &str, text: &str) {
        self.open(name, &[]);
        let _ = self.0.write_event(Event::Text(BytesText::new(text)));
        self.close(name);
    }

    fn finish(self) -> String {
        String::from_utf8(self.0.into_inner()).expect("the writer writes UTF-8")
    }
}

/// What CAP says about an event, by language-independent fields.
struct Terms {
    msg_type: &'static str,
    urgency: &'static str,
    severity: &'static str,
    certainty: &'static str,
    response: &'static str,
}

fn terms(event: &WarningEvent) -> Terms {
    let lifted = event.kind == "lifted";
    let msg_type = match event.kind {
        EventKind::Raised => "Alert",
        EventKind::Lifted => "Cancel",
        _ => "Update",
    };
    if lifted {
        return Terms {
            msg_type,
            urgency: "Past",
            severity: "Minor",
            certainty: "Observed",
            response: "AllClear",
        };
    }
    let observed = event.warning_kind == "observed";
    // Tidemark's own nowcast is less sure than a forecaster's.
    let nowcast = event.detail.get("nowcast") == Some(&serde_json::Value::Bool(true));
    Terms {
        msg_type,
        urgency: if observed { "Immediate" } else { "Expected" },
        severity: match event.severity {
            Severity::Severe => "Extreme",
            Severity::Warning => "Severe",
            Severity::Alert => "Moderate",
        },
        certainty: match (observed, nowcast) {
            (true, _) => "Observed",
            (false, false) => "Likely",
            (false, true) => "Possible",
        },
        response: match event.severity {
            Severity::Severe => "Execute",
            Severity::Warning => "Prepare",
            Severity::Alert => "Monitor",
        },
    }
}

struct Language {
    code: &'static str,
    event: String,
    sender_name: &'static str,
    headline: String,
    description: String,
    instruction: &'static str,
}

fn languages(event: &WarningEvent) -> [Language; 2] {
    let lifted = event.kind == "lifted";
    let drought = event.category == Category::Drought;
    let (event_en, event_da) = match (lifted, drought) {
        (true, false) => (
            "Flood warning no longer in force".to_owned(),
            "Oversvømmelsesvarsel ophævet".to_owned(),
        ),
        (true, true) => (
            "Drought warning no longer in force".to_owned(),
            "Tørkevarsel ophævet".to_owned(),
        ),
        (false, false) => {
            let da = match event.severity {
                Severity::Severe => "Alvorligt oversvømmelsesvarsel",
                Severity::Warning => "Oversvømmelsesvarsel",
                Severity::Alert => "Oversvømmelsesberedskab",
            };
            (event.severity.public_name().to_owned(), da.to_owned())
        }
        (false, true) => (
            event.category.severity_name(event.severity).to_owned(),
            event.category.severity_name_da(event.severity).to_owned(),
        ),
    };
    let (instruction_en, instruction_da) = match (lifted, drought, event.severity) {
        (true, false, _) => (
            "Flooding is no longer expected. Take care: flood water may remain and be contaminated.",
            "Der forventes ikke længere oversvømmelse. Pas på: vandet kan stå endnu og være forurenet.",
        ),
        (false, false, Severity::Severe) => (
            "Danger to life. Follow the instructions of the emergency services and leave if told to.",
            "Livsfare. Følg beredskabets anvisninger, og forlad området, hvis I bliver bedt om det.",
        ),
        (false, false, Severity::Warning) => (
            "Flooding is expected. Act now: move people, vehicles and valuables to safety.",
            "Der forventes oversvømmelse. Handl nu: bring personer, køretøjer og værdier i sikkerhed.",
        ),
        (false, false, _) => (
            "Flooding is possible. Be prepared and follow the water levels.",
            "Oversvømmelse er mulig. Vær forberedt, og følg vandstanden.",
        ),
        (true, true, _) => (
            "The water level has recovered. Restrictions may be lifted as the water utility announces.",
            "Vandstanden er normal igen. Restriktioner kan ophæves, når vandforsyningen melder det.",
        ),
        (false, true, Severity::Severe) => (
            "The water level is very low. Follow the water utility's restrictions; use water for essential needs only.",
            "Vandstanden er meget lav. Følg vandforsyningens restriktioner, og brug kun vand til det nødvendige.",
        ),
        (false, true, Severity::Warning) => (
            "The water level is low. Save water and follow the water utility's advice.",
            "Vandstanden er lav. Spar på vandet, og følg vandforsyningens råd.",
        ),
        (false, true, _) => (
            "The water level is falling towards a low. Use water sparingly and follow the water levels.",
            "Vandstanden falder mod et lavt niveau. Brug vandet med omtanke, og følg vandstanden.",
        ),
    };
    let (sender_en, sender_da) = if drought {
        ("Tidemark drought warnings", "Tidemark tørkevarsler")
    } else {
        ("Tidemark flood warnings", "Tidemark oversvømmelsesvarsler")
    };
    [
        Language {
            code: "en-GB",
            headline: format!("{event_en}: {}", event.subject_name),
            event: event_en,
            sender_name: sender_en,
            description: event.message_en.clone(),
            instruction: instruction_en,
        },
        Language {
            code: "da-DK",
            headline: format!("{event_da}: {}", event.subject_name),
            event: event_da,
            sender_name: sender_da,
            description: event.message_da.clone(),
            instruction: instruction_da,
        },
    ]
}

/// The exterior ring of a GeoJSON Polygon as CAP's "lat,lon lat,lon ..." with the ring closed.
pub fn cap_polygon(polygon: &serde_json::Value) -> Option<String> {
    let ring = polygon.get("coordinates")?.get(0)?.as_array()?;
    let mut points: Vec<(f64, f64)> = ring
        .iter()
        .filter_map(|p| Some((p.get(1)?.as_f64()?, p.get(0)?.as_f64()?)))
        .collect();
    if points.len() < 3 {
        return None;
    }
    if points.first() != points.last() {
        points.push(points[0]);
    }
    Some(
        points
            .iter()
            .map(|(lat, lon)| format!("{lat:.6},{lon:.6}"))
            .collect::<Vec<_>>()
            .join(" "),
    )
}

/// The CAP 1.2 message of `event`. `earlier` are the warning's public events before it (for
/// `references`); `polygon` the area's GeoJSON Polygon; `municipalities` (code, name) pairs.
pub fn alert(
    settings: &CapSettings,
    event: &WarningEvent,
    earlier: &[WarningEvent],
    polygon: &serde_json::Value,
    municipalities: &[(String, String)],
) -> String {
    let terms = terms(event);
    let sent = cap_time(event.recorded_at);
    let expires = cap_time(
        event.recorded_at + Duration::from_std(settings.expires_after).unwrap_or_default(),
    );
    let base = settings.public_url.trim_end_matches('/');
    let mut xml = Xml::new();
    xml.open("alert", &[("xmlns", CAP_NAMESPACE)]);
    xml.text("identifier", &identifier(event.id));
    xml.text("sender", &settings.sender);
    xml.text("sent", &sent);
    xml.text("status", "Actual");
    xml.text("msgType", terms.msg_type);
    xml.text("scope", "Public");
    if terms.msg_type != "Alert" {
        let references: Vec<String> = earlier
            .iter()
            .filter(|e| e.id < event.id && is_public(e))
            .map(|e| {
                format!(
                    "{},{},{}",
                    settings.sender,
                    identifier(e.id),
                    cap_time(e.recorded_at)
                )
            })
            .collect();
        if !references.is_empty() {
            xml.text("references", &references.join(" "));
        }
    }
    xml.text(
        "incidents",
        &format!("tidemark-warning-{}", event.warning_id),
    );
    let names: Vec<&str> = municipalities.iter().map(|(_, n)| n.as_str()).collect();
    let area_desc = if names.is_empty() {
        event.subject_name.clone()
    } else {
        format!("{} ({})", event.subject_name, names.join(", "))
    };
    for language in languages(event) {
        xml.open("info", &[]);
        xml.text("language", language.code);
        xml.text("category", "Met");
        xml.text("category", "Env");
        xml.text("event", &language.event);
        xml.text("responseType", terms.response);
        xml.text("urgency", terms.urgency);
        xml.text("severity", terms.severity);
        xml.text("certainty", terms.certainty);
        xml.text("effective", &sent);
        xml.text("expires", &expires);
        xml.text("senderName", language.sender_name);
        xml.text("headline", &language.headline);
        xml.text("description", &language.description);
        xml.text("instruction", language.instruction);
        xml.text(
            "web",
            &format!("{base}/api/v1/warnings/{}", event.warning_id),
        );
        xml.open("area", &[]);
        xml.text("areaDesc", &area_desc);
        if let Some(polygon) = cap_polygon(polygon) {
            xml.text("polygon", &polygon);
        }
        for (code, _) in municipalities {
            xml.open("geocode", &[]);
            xml.text("valueName", "kommunekode");
            xml.text("value", code);
            xml.close("geocode");
        }
        xml.close("area");
        xml.close("info");
    }
    xml.close("alert");
    xml.finish()
}

/// An entry of the Atom feed: the latest public event of a warning in force.
pub struct FeedEntry<'a> {
    pub event: &'a WarningEvent,
}

/// The Atom feed (RFC 4287) of current alerts, each entry linking to its CAP message.
pub fn atom_feed(settings: &CapSettings, entries: &[FeedEntry<'_>], now: DateTime<Utc>) -> String {
    let base = settings.public_url.trim_end_matches('/');
    let self_url = format!("{base}/api/v1/warnings.atom");
    let updated = entries
        .iter()
        .map(|e| e.event.recorded_at)
        .max()
        .unwrap_or(now);
    let mut xml = Xml::new();
    xml.open("feed", &[("xmlns", ATOM_NAMESPACE)]);
    xml.text("id", &self_url);
    xml.text("title", "Tidemark flood warnings in force");
    xml.text(
        "updated",
        &updated.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    );
    xml.open("author", &[]);
    xml.text("name", &settings.sender);
    xml.close("author");
    xml.empty(
        "link",
        &[
            ("rel", "self"),
            ("type", "application/atom+xml"),
            ("href", &self_url),
        ],
    );
    for entry in entries {
        let event = entry.event;
        let cap_url = format!("{base}/api/v1/warning-events/{}.cap", event.id);
        let [english, _] = languages(event);
        xml.open("entry", &[]);
        xml.text("id", &cap_url);
        xml.text("title", &english.headline);
        xml.text(
            "updated",
            &event
                .recorded_at
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        );
        xml.text("summary", &event.message_en);
        xml.empty(
            "link",
            &[
                ("rel", "alternate"),
                ("type", CAP_CONTENT_TYPE),
                ("href", &cap_url),
            ],
        );
        xml.close("entry");
    }
    xml.close("feed");
    xml.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use tidemark_testkit::cap as validate;

    fn event(id: i64, kind: &str, severity: i16, warning_kind: &str) -> WarningEvent {
        WarningEvent {
            id,
            warning_id: 7,
            category: tidemark_model::warning::Category::Flood,
            subject_key: "flensburg".to_owned(),
            subject_name: "Flensburg & Kollund <harbour>".to_owned(),
            kind: EventKind::parse(kind).unwrap(),
            severity: Severity::from_level(severity).unwrap(),
            warning_kind: tidemark_model::warning::WarningKind::parse(warning_kind).unwrap(),
            at: Utc.with_ymd_and_hms(2023, 10, 20, 18, 0, 0).unwrap(),
            recorded_at: Utc
                .with_ymd_and_hms(2023, 10, 20, 18, 0, id as u32)
                .unwrap(),
            message_en: "Water at 1.80 m".to_owned(),
            message_da: "Vandstand 1,80 m".to_owned(),
            detail: serde_json::json!({}),
            municipalities: vec!["0580".to_owned()],
            warning_state: tidemark_model::warning::WarningState::InForce,
        }
    }

    fn settings() -> CapSettings {
        CapSettings {
            sender: "tidemark@example.org".to_owned(),
            public_url: "https://warnings.example.org".to_owned(),
            expires_after: std::time::Duration::from_secs(6 * 3600),
        }
    }

    fn square() -> serde_json::Value {
        serde_json::json!({"type": "Polygon", "coordinates": [[[9.4, 54.8], [9.5, 54.8], [9.5, 54.9], [9.4, 54.9]]]})
    }

    #[test]
    fn raise_update_and_cancel_are_valid_and_reference_the_original() {
        let raised = event(1, "raised", 1, "expected");
        let changed = event(2, "changed", 3, "observed");
        let lifted = event(3, "lifted", 3, "observed");
        let municipalities = vec![("0580".to_owned(), "Aabenraa".to_owned())];
        let history = [raised.clone(), changed.clone()];
        for (e, earlier, msg_type) in [
            (&raised, &history[..0], "Alert"),
            (&changed, &history[..1], "Update"),
            (&lifted, &history[..], "Cancel"),
        ] {
            let xml = alert(&settings(), e, earlier, &square(), &municipalities);
            assert_eq!(validate::problems(&xml), Vec::<String>::new(), "{xml}");
            let root = validate::parse(&xml).unwrap();
            assert_eq!(root.child("msgType").unwrap().text, msg_type);
            if msg_type != "Alert" {
                let references = &root.child("references").unwrap().text;
                assert!(references.starts_with(
                    "tidemark@example.org,tidemark-warning-event-1,2023-10-20T20:00:01+02:00"
                ));
            }
            let info: Vec<_> = root.all("info").collect();
            assert_eq!(info.len(), 2);
            assert_eq!(info[0].child("language").unwrap().text, "en-GB");
            assert_eq!(info[1].child("language").unwrap().text, "da-DK");
            assert!(info[0]
                .child("area")
                .unwrap()
                .child("areaDesc")
                .unwrap()
                .text
                .contains("&"));
        }
        let root = validate::parse(&alert(
            &settings(),
            &raised,
            &[],
            &square(),
            &municipalities,
        ))
        .unwrap();
        let info = root.child("info").unwrap();
        assert_eq!(info.child("urgency").unwrap().text, "Expected");
        assert_eq!(info.child("certainty").unwrap().text, "Likely");
        assert_eq!(info.child("severity").unwrap().text, "Moderate");
        // Expected from Tidemark's own nowcast: only Possible.
        let mut nowcast = raised.clone();
        nowcast.detail =
            serde_json::json!({"cause": "forecast", "source": "nowcast", "nowcast": true});
        let root = validate::parse(&alert(
            &settings(),
            &nowcast,
            &[],
            &square(),
            &municipalities,
        ))
        .unwrap();
        let info = root.child("info").unwrap();
        assert_eq!(info.child("urgency").unwrap().text, "Expected");
        assert_eq!(info.child("certainty").unwrap().text, "Possible");
        let polygon = &info.child("area").unwrap().child("polygon").unwrap().text;
        assert!(
            polygon.starts_with("54.800000,9.400000 ") && polygon.ends_with(" 54.800000,9.400000")
        );
    }

    #[test]
    fn the_checker_finds_broken_messages() {
        let good = alert(
            &settings(),
            &event(2, "changed", 2, "observed"),
            &[event(1, "raised", 1, "observed")],
            &square(),
            &[],
        );
        let broken = [
            (good.replace("+02:00</sent>", "Z</sent>"), "CAP dateTime"),
            (
                good.replace("<scope>Public</scope>", "<scope>Everyone</scope>"),
                "scope",
            ),
            (
                good.replace(CAP_NAMESPACE, "urn:oasis:names:tc:emergency:cap:1.1"),
                "namespace",
            ),
            (
                good.replace("<identifier>tidemark-warning-event-2", "<identifier>a b"),
                "identifier",
            ),
            (
                good.replace("<severity>Severe", "<severity>Bad"),
                "severity",
            ),
            (
                good.replace(" 54.800000,9.400000</polygon>", "</polygon>"),
                "first point",
            ),
            (
                good.split("<references>").next().unwrap().to_owned() + "</alert>",
                "reference",
            ),
            (
                good.replacen("<status>Actual</status>", "", 1),
                "needs <status>",
            ),
        ];
        for (xml, expected) in broken {
            let problems = validate::problems(&xml);
            assert!(
                problems.iter().any(|p| p.contains(expected)),
                "{expected}: {problems:?}"
            );
        }
    }

    #[test]
    fn cap_times_carry_the_danish_offset() {
        let winter = Utc.with_ymd_and_hms(2023, 12, 1, 12, 0, 0).unwrap();
        let summer = Utc.with_ymd_and_hms(2023, 7, 1, 12, 0, 0).unwrap();
        assert_eq!(cap_time(winter), "2023-12-01T13:00:00+01:00");
        assert_eq!(cap_time(summer), "2023-07-01T14:00:00+02:00");
        assert!(validate::is_cap_time(&cap_time(winter)));
        assert!(!validate::is_cap_time("2023-12-01T13:00:00Z"));
    }

    #[test]
    fn the_feed_is_well_formed_atom() {
        let e = event(4, "changed", 2, "observed");
        let feed = atom_feed(&settings(), &[FeedEntry { event: &e }], Utc::now());
        let root = validate::parse(&feed).unwrap();
        assert_eq!(root.name, "feed");
        assert_eq!(root.attribute("xmlns"), Some(ATOM_NAMESPACE));
        let entry = root.child("entry").unwrap();
        assert_eq!(
            entry.child("link").unwrap().attribute("href"),
            Some("https://warnings.example.org/api/v1/warning-events/4.cap")
        );
        for required in ["id", "title", "updated"] {
            assert!(root.child(required).is_some() && entry.child(required).is_some());
        }
    }
}
