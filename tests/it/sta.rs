//! The OGC SensorThings API v1.1 (`/sta/v1.1`) over real HTTP against the real database: entity
//! shapes and links, navigation, every query option, keyset paging checked against the open data
//! API's raw readings, the Data Array extension, and errors (400 and 501 naming the option).

use crate::support::*;
use chrono::{DateTime, Duration as ChronoDuration, Utc};
use serde_json::Value;
use tidemark_store::readings::ReadingRow;

use crate::opendata::{start, value_at, READINGS, SENSOR, SPIKE_INDEX};

/// A time as the API writes it.
fn api_time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
}

/// The open data tests' two days of Flensburg readings (one a flagged spike), and three of
/// Kappeln's.
async fn loaded() -> (Harness, Api, i32) {
    let (harness, api) = crate::opendata::loaded().await;
    let kappeln = sensor_id(&harness, "kappeln.sea_level").await;
    let rows: Vec<ReadingRow> = (0..3)
        .map(|i| ReadingRow {
            sensor_id: kappeln,
            ts: start() + ChronoDuration::minutes(10 * i),
            value: 0.5,
            quality: 0,
        })
        .collect();
    store_readings(&harness, &rows).await;
    let id = sensor_id(&harness, SENSOR).await;
    (harness, api, id)
}

/// Each observation's time and result.
fn series(observations: &[Value]) -> Vec<(String, f64)> {
    observations
        .iter()
        .map(|o| {
            (
                o["phenomenonTime"].as_str().unwrap().to_owned(),
                o["result"].as_f64().unwrap(),
            )
        })
        .collect()
}

async fn get(api: &Api, path: &str) -> (u16, Value) {
    let url = if path.starts_with("http") {
        path.to_owned()
    } else {
        api.url(path)
    };
    let response = api.http.get(url).send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, body)
}

async fn ok(api: &Api, path: &str) -> Value {
    let (status, body) = get(api, path).await;
    assert_eq!(status, 200, "{path}: {body}");
    body
}

/// Every entity of a collection, following `@iot.nextLink` to the end.
async fn all(api: &Api, path: &str) -> (Vec<Value>, usize) {
    let mut values = Vec::new();
    let mut pages = 0;
    let mut next = Some(path.to_owned());
    while let Some(link) = next {
        let page = ok(api, &link).await;
        pages += 1;
        values.extend(page["value"].as_array().unwrap().iter().cloned());
        next = page["@iot.nextLink"].as_str().map(str::to_owned);
        assert!(pages < 1_000, "paging does not end");
    }
    (values, pages)
}

/// Asserts that `path` is refused with a 400 naming `$expand` whose detail says `says`.
async fn expansion_refused(api: &Api, path: &str, says: &str) {
    let (status, body) = get(api, path).await;
    assert_eq!(
        (status, &body["parameter"]),
        (400, &Value::from("$expand")),
        "{body}"
    );
    assert!(body["detail"].as_str().unwrap().contains(says), "{body}");
}

fn names(values: &[Value]) -> Vec<&str> {
    values.iter().map(|v| v["name"].as_str().unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entities_carry_their_links_and_navigation_reaches_related_entities() {
    let (harness, api, sensor) = loaded().await;
    let base = format!("{}/sta/v1.1", api.base);

    let landing = ok(&api, "/sta/v1.1").await;
    let sets: Vec<&str> = landing["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    for set in [
        "Things",
        "Locations",
        "HistoricalLocations",
        "Datastreams",
        "Sensors",
        "Observations",
        "ObservedProperties",
        "FeaturesOfInterest",
    ] {
        assert!(sets.contains(&set), "{set} missing from {sets:?}");
    }
    let conformance = landing["serverSettings"]["conformance"].to_string();
    assert!(conformance.contains("/req/request-data"), "{conformance}");
    assert!(conformance.contains("/req/data-array/data-array"));

    let things = ok(&api, "/sta/v1.1/Things").await;
    let flensburg = things["value"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "Flensburg")
        .unwrap()
        .clone();
    let thing_id = flensburg["@iot.id"].as_i64().unwrap();
    assert_eq!(
        flensburg["@iot.selfLink"],
        format!("{base}/Things({thing_id})")
    );
    assert_eq!(flensburg["properties"]["key"], "flensburg");
    for nav in ["Locations", "HistoricalLocations", "Datastreams"] {
        assert_eq!(
            flensburg[format!("{nav}@iot.navigationLink")],
            format!("{base}/Things({thing_id})/{nav}")
        );
    }
    // The self link gives the same entity.
    assert_eq!(
        ok(&api, flensburg["@iot.selfLink"].as_str().unwrap()).await,
        flensburg
    );

    // Its location, as GeoJSON.
    let locations = ok(
        &api,
        flensburg["Locations@iot.navigationLink"].as_str().unwrap(),
    )
    .await;
    let location = &locations["value"][0];
    assert_eq!(location["encodingType"], "application/geo+json");
    assert_eq!(location["location"]["type"], "Point");
    assert_eq!(location["location"]["coordinates"][0], 9.434);
    assert_eq!(location["location"]["coordinates"][1], 54.796);

    // Its datastream: unit, type, extents from the readings.
    let datastreams = ok(
        &api,
        flensburg["Datastreams@iot.navigationLink"]
            .as_str()
            .unwrap(),
    )
    .await;
    let datastream = &datastreams["value"][0];
    assert_eq!(datastreams["value"].as_array().unwrap().len(), 1);
    assert_eq!(datastream["@iot.id"], sensor);
    assert_eq!(datastream["unitOfMeasurement"]["symbol"], "m");
    assert_eq!(datastream["unitOfMeasurement"]["name"], "metre");
    assert!(datastream["observationType"]
        .as_str()
        .unwrap()
        .ends_with("OM_Measurement"));
    let last = start() + ChronoDuration::minutes(10 * (READINGS - 1));
    assert_eq!(
        datastream["phenomenonTime"],
        format!("{}/{}", api_time(start()), api_time(last))
    );
    assert_eq!(datastream["observedArea"]["coordinates"][0], 9.434);

    // To-one navigation, a property and its raw value, association links.
    let thing = ok(&api, &format!("/sta/v1.1/Datastreams({sensor})/Thing")).await;
    assert_eq!(thing["@iot.id"], thing_id);
    assert_eq!(
        ok(&api, &format!("/sta/v1.1/Datastreams({sensor})/Thing/name")).await,
        serde_json::json!({"name": "Flensburg"})
    );
    assert_eq!(
        ok(
            &api,
            &format!("/sta/v1.1/Datastreams({sensor})/Thing/name/$value")
        )
        .await,
        "Flensburg"
    );
    let refs = ok(
        &api,
        &format!("/sta/v1.1/Things({thing_id})/Datastreams/$ref"),
    )
    .await;
    assert_eq!(
        refs["value"],
        serde_json::json!([{"@iot.selfLink": format!("{base}/Datastreams({sensor})")}])
    );
    let sensor_entity = ok(&api, &format!("/sta/v1.1/Datastreams({sensor})/Sensor")).await;
    assert_eq!(sensor_entity["metadata"], "flensburg-gauge");
    let property = ok(
        &api,
        &format!("/sta/v1.1/Datastreams({sensor})/ObservedProperty"),
    )
    .await;
    assert_eq!(property["@iot.id"], "sea_level");
    assert_eq!(
        property["@iot.selfLink"],
        format!("{base}/ObservedProperties('sea_level')")
    );
    assert!(property["definition"]
        .as_str()
        .unwrap()
        .contains("sea_level"));
    let streams = ok(
        &api,
        "/sta/v1.1/ObservedProperties('sea_level')/Datastreams",
    )
    .await;
    assert_eq!(streams["value"].as_array().unwrap().len(), 3);

    // An observation: its id, its links, its datastream and feature of interest.
    let first = ok(
        &api,
        &format!("/sta/v1.1/Datastreams({sensor})/Observations?$top=1&$orderby=phenomenonTime"),
    )
    .await["value"][0]
        .clone();
    assert_eq!(first["phenomenonTime"], api_time(start()));
    assert_eq!(first["result"], value_at(0));
    assert_eq!(first["resultQuality"], serde_json::json!(["good"]));
    let self_link = first["@iot.selfLink"].as_str().unwrap();
    assert_eq!(ok(&api, self_link).await, first);
    let datastream_of = ok(&api, &format!("{self_link}/Datastream")).await;
    assert_eq!(datastream_of["@iot.id"], sensor);
    let feature = ok(&api, &format!("{self_link}/FeatureOfInterest")).await;
    assert_eq!(feature["@iot.id"], thing_id);
    assert_eq!(feature["feature"]["type"], "Point");
    let at_feature = ok(
        &api,
        &format!("/sta/v1.1/FeaturesOfInterest({thing_id})/Observations?$count=true&$top=1"),
    )
    .await;
    assert_eq!(at_feature["@iot.count"], READINGS);

    // What is not there.
    for (path, status) in [
        ("/sta/v1.1/Things(999999)", 404),
        ("/sta/v1.1/Things(999999)/Datastreams", 404),
        ("/sta/v1.1/Widgets", 404),
        ("/sta/v1.1/Things('x')", 400),
        ("/sta/v1.1/Observations('1-x')", 400),
        ("/sta/v1.1/Things/Datastreams", 400),
        ("/sta/v1.1/Observations('999-0')", 404),
    ] {
        let (got, body) = get(&api, path).await;
        assert_eq!(got, status, "{path}: {body}");
        assert!(body["detail"].is_string(), "{path}: {body}");
    }
    harness.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observations_page_by_keyset_and_equal_the_raw_readings() {
    let (harness, api, sensor) = loaded().await;

    // The open data API's raw readings, every page.
    let mut raw = Vec::new();
    let mut next = Some(format!(
        "/api/v1/sensors/{SENSOR}/readings?from=2023-10-01T00:00:00Z&to=2023-11-01T00:00:00Z&limit=100"
    ));
    while let Some(path) = next {
        let page = ok(&api, &path).await;
        for r in page["readings"].as_array().unwrap() {
            raw.push((
                r["ts"].as_str().unwrap().to_owned(),
                r["value"].as_f64().unwrap(),
            ));
        }
        next = page["next"].as_str().map(|cursor| {
            format!("/api/v1/sensors/{SENSOR}/readings?from=2023-10-01T00:00:00Z&to=2023-11-01T00:00:00Z&limit=100&cursor={cursor}")
        });
    }
    assert_eq!(raw.len() as i64, READINGS);

    let (observations, pages) = all(
        &api,
        &format!("/sta/v1.1/Datastreams({sensor})/Observations?$orderby=phenomenonTime&$top=50"),
    )
    .await;
    assert_eq!(pages, 6);
    let got = series(&observations);
    assert_eq!(got, raw);
    // The pages continue from a key, not an offset.
    let second = ok(
        &api,
        &format!("/sta/v1.1/Datastreams({sensor})/Observations?$orderby=phenomenonTime&$top=50"),
    )
    .await;
    let link = second["@iot.nextLink"].as_str().unwrap();
    assert!(link.contains("%24skiptoken="), "{link}");
    assert!(!link.contains("%24skip="), "{link}");

    // Newest first, and the flagged spike.
    let (newest_first, _) = all(
        &api,
        &format!(
            "/sta/v1.1/Datastreams({sensor})/Observations?$orderby=phenomenonTime desc&$top=100"
        ),
    )
    .await;
    let mut reversed = got.clone();
    reversed.reverse();
    assert_eq!(series(&newest_first), reversed);
    let spike = &observations[SPIKE_INDEX as usize];
    assert_eq!(spike["resultQuality"], serde_json::json!(["spike"]));
    assert!(spike["parameters"]["receivedAt"].is_string());

    // All Observations, by id across datastreams: every reading once.
    let (every, _) = all(&api, "/sta/v1.1/Observations?$top=70&$select=id,result").await;
    assert_eq!(every.len() as i64, READINGS + 3);
    let mut ids: Vec<&str> = every
        .iter()
        .map(|o| o["@iot.id"].as_str().unwrap())
        .collect();
    ids.dedup();
    assert_eq!(ids.len() as i64, READINGS + 3);
    assert_eq!(every[0].as_object().unwrap().len(), 2, "{}", every[0]);
    // Ordered by id, the same, continuing from a key; newest id first by offset.
    let (by_id, _) = all(
        &api,
        "/sta/v1.1/Observations?$top=70&$orderby=id&$select=id,result",
    )
    .await;
    assert_eq!(by_id, every);
    let first_page = ok(&api, "/sta/v1.1/Observations?$top=70&$orderby=id").await;
    assert!(first_page["@iot.nextLink"]
        .as_str()
        .unwrap()
        .contains("%24skiptoken="));
    let (by_id_desc, _) = all(
        &api,
        "/sta/v1.1/Observations?$top=70&$orderby=id desc&$select=id,result",
    )
    .await;
    let mut reversed_ids = every.clone();
    reversed_ids.reverse();
    assert_eq!(by_id_desc, reversed_ids);

    // An order by value pages by offset, and still returns each once.
    let (by_value, _) = all(
        &api,
        &format!(
            "/sta/v1.1/Datastreams({sensor})/Observations?$orderby=result desc&$top=40&$count=true"
        ),
    )
    .await;
    assert_eq!(by_value.len() as i64, READINGS);
    assert_eq!(by_value[0]["result"], 16.71);
    let counted = ok(
        &api,
        &format!("/sta/v1.1/Datastreams({sensor})/Observations?$count=true&$top=1"),
    )
    .await;
    assert_eq!(counted["@iot.count"], READINGS);
    let only_counted = ok(
        &api,
        &format!("/sta/v1.1/Datastreams({sensor})/Observations?$count=true&$top=0"),
    )
    .await;
    assert_eq!(only_counted["@iot.count"], READINGS);
    assert_eq!(only_counted["value"], serde_json::json!([]));
    assert!(only_counted["@iot.nextLink"].is_null(), "{only_counted}");

    // The Data Array extension: the same values, grouped under their datastream.
    let array = ok(
        &api,
        &format!("/sta/v1.1/Datastreams({sensor})/Observations?$resultFormat=dataArray&$select=phenomenonTime,result&$orderby=phenomenonTime&$top=1000"),
    )
    .await;
    let group = &array["value"][0];
    assert_eq!(array["value"].as_array().unwrap().len(), 1);
    assert_eq!(
        group["components"],
        serde_json::json!(["phenomenonTime", "result"])
    );
    assert_eq!(group["dataArray@iot.count"], READINGS);
    assert!(group["Datastream@iot.navigationLink"]
        .as_str()
        .unwrap()
        .ends_with(&format!("/Datastreams({sensor})")));
    let arrayed: Vec<(String, f64)> = group["dataArray"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            (
                row[0].as_str().unwrap().to_owned(),
                row[1].as_f64().unwrap(),
            )
        })
        .collect();
    assert_eq!(arrayed, raw);
    let both = ok(
        &api,
        "/sta/v1.1/Observations?$resultFormat=dataArray&$top=1000",
    )
    .await;
    assert_eq!(
        both["value"].as_array().unwrap().len(),
        2,
        "two datastreams"
    );
    assert_eq!(both["value"][0]["components"][0], "id");
    harness.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_select_expand_and_order_as_odata_says_and_errors_name_the_option() {
    let (harness, api, sensor) = loaded().await;
    let count = |values: &[Value]| values.len();
    let observations = |filter: &str| {
        format!("/sta/v1.1/Datastreams({sensor})/Observations?$top=1000&$filter={filter}")
    };
    let expected =
        |keep: &dyn Fn(i64, f64) -> bool| (0..READINGS).filter(|i| keep(*i, value_at(*i))).count();

    // Comparison, logical and arithmetic operators.
    let (over, _) = all(&api, &observations("result gt 1.5")).await;
    assert_eq!(count(&over), expected(&|_, v| v > 1.5));
    assert!(over.iter().all(|o| o["result"].as_f64().unwrap() > 1.5));
    let (scaled, _) = all(
        &api,
        &observations("result mul 100 ge 150 and not (result eq 16.71)"),
    )
    .await;
    assert_eq!(count(&scaled), expected(&|_, v| v >= 1.5 && v != 16.71));
    let (either, _) = all(&api, &observations("result lt 0.1 or result sub 16 gt 0")).await;
    assert_eq!(count(&either), expected(&|_, v| !(0.1..=16.0).contains(&v)));
    let (modulo, _) = all(&api, &observations("round(result mul 100) mod 2 eq 1")).await;
    assert_eq!(
        count(&modulo),
        expected(&|_, v| ((v * 100.0).round() as i64) % 2 == 1)
    );

    // Times and the time functions.
    let day_two = start() + ChronoDuration::days(1);
    let (second_day, _) = all(
        &api,
        &observations(&format!(
            "phenomenonTime ge {} and resultTime lt {}",
            api_time(day_two),
            api_time(day_two + ChronoDuration::days(1))
        )),
    )
    .await;
    assert_eq!(count(&second_day), 144);
    let (on_the_hour, _) = all(
        &api,
        &observations("minute(phenomenonTime) eq 0 and hour(phenomenonTime) eq 3"),
    )
    .await;
    assert_eq!(count(&on_the_hour), 2);
    let (by_date, _) = all(&api, &observations("date(phenomenonTime) eq 2023-10-20 and day(phenomenonTime) eq 20 and month(phenomenonTime) eq 10 and year(phenomenonTime) eq 2023")).await;
    assert_eq!(count(&by_date), 144);

    // Through navigation properties.
    let (via_thing, _) = all(
        &api,
        "/sta/v1.1/Observations?$top=1000&$filter=Datastream/Thing/name eq 'Kappeln'",
    )
    .await;
    assert_eq!(count(&via_thing), 3);

    // String functions on Things.
    for (filter, want) in [
        ("startswith(name, 'Kiel')", vec!["Kiel-Holtenau"]),
        ("endswith(name, 'peln')", vec!["Kappeln"]),
        ("substringof('lens', name)", vec!["Flensburg"]),
        ("tolower(name) eq 'kappeln'", vec!["Kappeln"]),
        ("toupper(name) eq 'KAPPELN'", vec!["Kappeln"]),
        (
            "length(name) eq 9 and indexof(name, 'burg') eq 5",
            vec!["Flensburg"],
        ),
        ("substring(name, 1, 3) eq 'iel'", vec!["Kiel-Holtenau"]),
        ("concat(name, '!') eq 'Kappeln!'", vec!["Kappeln"]),
        ("trim(' Kappeln ') eq name", vec!["Kappeln"]),
        ("properties/key eq 'flensburg'", vec!["Flensburg"]),
        ("name eq 'O''Brien''; DROP TABLE readings; --'", vec![]),
    ] {
        let page = ok(
            &api,
            &format!("/sta/v1.1/Things?$filter={filter}&$orderby=name"),
        )
        .await;
        let values = page["value"].as_array().unwrap();
        assert_eq!(names(values), want, "{filter}");
    }
    // The injection attempt above was a value, nothing more.
    let client = sql(&harness).await;
    let rows: i64 = client
        .query_one("SELECT count(*) FROM readings", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, READINGS + 3);

    // Geometry: a box around Flensburg, and a point.
    let flensburg_box = "geography'POLYGON((9.3 54.7, 9.5 54.7, 9.5 54.9, 9.3 54.9, 9.3 54.7))'";
    for filter in [
        format!("st_within(location, {flensburg_box})"),
        format!("geo.intersects(location, {flensburg_box})"),
        format!("st_contains({flensburg_box}, location)"),
        "st_equals(location, geography'POINT(9.434 54.796)')".to_owned(),
    ] {
        let page = ok(&api, &format!("/sta/v1.1/Locations?$filter={filter}")).await;
        assert_eq!(
            names(page["value"].as_array().unwrap()),
            ["Flensburg"],
            "{filter}"
        );
    }
    let page = ok(
        &api,
        &format!("/sta/v1.1/Locations?$filter=st_disjoint(location, {flensburg_box})"),
    )
    .await;
    assert_eq!(page["value"].as_array().unwrap().len(), 2);
    let near = ok(
        &api,
        "/sta/v1.1/FeaturesOfInterest?$filter=geo.distance(feature, geography'POINT(9.434 54.796)') lt 0.5",
    )
    .await;
    // Kappeln lies 0.52 degrees away.
    assert_eq!(names(near["value"].as_array().unwrap()), ["Flensburg"]);

    // $select, $orderby, $top, $skip.
    let selected = ok(&api, "/sta/v1.1/Things?$select=name&$orderby=name desc").await;
    assert_eq!(
        selected["value"],
        serde_json::json!([{"name": "Kiel-Holtenau"}, {"name": "Kappeln"}, {"name": "Flensburg"}])
    );
    let skipped = ok(
        &api,
        "/sta/v1.1/Things?$orderby=name&$top=1&$skip=1&$count=true",
    )
    .await;
    assert_eq!(names(skipped["value"].as_array().unwrap()), ["Kappeln"]);
    assert_eq!(skipped["@iot.count"], 3);
    let next = skipped["@iot.nextLink"].as_str().unwrap();
    assert!(next.contains("%24skip=2"), "{next}");
    assert_eq!(
        names(ok(&api, next).await["value"].as_array().unwrap()),
        ["Kiel-Holtenau"]
    );

    // $expand, nested, with options at each level.
    let expanded = ok(
        &api,
        "/sta/v1.1/Things?$filter=name eq 'Flensburg'&$expand=Locations,Datastreams($select=name,unitOfMeasurement;$expand=Observations($top=2;$orderby=phenomenonTime desc;$select=result;$count=true))",
    )
    .await;
    let thing = &expanded["value"][0];
    assert_eq!(thing["Locations"][0]["location"]["type"], "Point");
    let datastream = &thing["Datastreams"][0];
    assert_eq!(datastream["name"], "flensburg.sea_level");
    assert_eq!(datastream["Observations@iot.count"], READINGS);
    assert_eq!(
        datastream["Observations"],
        serde_json::json!([{"result": value_at(READINGS - 1)}, {"result": value_at(READINGS - 2)}])
    );
    let more = datastream["Observations@iot.nextLink"].as_str().unwrap();
    let rest = ok(&api, more).await;
    assert_eq!(
        rest["value"][0],
        serde_json::json!({"result": value_at(READINGS - 3)})
    );
    let path_expand = ok(
        &api,
        &format!("/sta/v1.1/Observations?$top=1&$filter=Datastream/id eq {sensor}&$expand=Datastream/Thing"),
    )
    .await;
    assert_eq!(
        path_expand["value"][0]["Datastream"]["Thing"]["name"],
        "Flensburg"
    );

    // Errors: a malformed option is 400, an unsupported one 501, each naming the option.
    for (path, status, option) in [
        ("/sta/v1.1/Things?$filter=name eq", 400, "$filter"),
        ("/sta/v1.1/Things?$filter=name gt 3", 400, "$filter"),
        ("/sta/v1.1/Things?$filter=nosuch eq 1", 400, "$filter"),
        ("/sta/v1.1/Things?$top=-1", 400, "$top"),
        ("/sta/v1.1/Things?$count=maybe", 400, "$count"),
        ("/sta/v1.1/Things?$select=colour", 400, "$select"),
        ("/sta/v1.1/Things?$expand=Widgets", 400, "$expand"),
        ("/sta/v1.1/Things?$orderby=name sideways", 400, "$orderby"),
        (
            "/sta/v1.1/Things?$resultFormat=dataArray",
            400,
            "$resultFormat",
        ),
        ("/sta/v1.1/Things?$skiptoken=nonsense", 400, "$skiptoken"),
        (
            "/sta/v1.1/Things?$filter=Datastreams/name eq 'x'",
            501,
            "$filter",
        ),
        ("/sta/v1.1/Things?$filter=fancy(name)", 501, "$filter"),
        (
            "/sta/v1.1/Locations?$filter=st_within(location, geography'LINESTRING(1 2, 3 4)')",
            501,
            "$filter",
        ),
        ("/sta/v1.1/Things?$search=x", 501, "$search"),
    ] {
        let (got, body) = get(&api, path).await;
        assert_eq!(got, status, "{path}: {body}");
        assert_eq!(body["parameter"], option, "{path}: {body}");
        assert!(
            body["detail"].as_str().is_some_and(|d| !d.is_empty()),
            "{path}: {body}"
        );
    }
    // Expansions are bounded: in entities held (288 observations, each expanding its feature's
    // 288 again, is over 50,000), and in reads (each of 2,500 observations read once more).
    expansion_refused(
        &api,
        "/sta/v1.1/FeaturesOfInterest?$expand=Observations($top=10000;$expand=FeatureOfInterest($expand=Observations($top=10000)))",
        "50000 entities",
    )
    .await;
    let kiel = sensor_id(&harness, "kiel-holtenau.sea_level").await;
    let more: Vec<ReadingRow> = (0..2_500)
        .map(|i| ReadingRow {
            sensor_id: kiel,
            ts: start() + ChronoDuration::minutes(i),
            value: 0.1,
            quality: 0,
        })
        .collect();
    store_readings(&harness, &more).await;
    expansion_refused(
        &api,
        &format!(
            "/sta/v1.1/Observations?$top=2500&$filter=Datastream/id eq {kiel}&$expand=Datastream"
        ),
        "2000 times",
    )
    .await;
    // Asking for more than a page holds is cut to the maximum and continues by link.
    let capped = ok(
        &api,
        &format!("/sta/v1.1/Datastreams({sensor})/Observations?$top=1000000"),
    )
    .await;
    assert_eq!(capped["value"].as_array().unwrap().len() as i64, READINGS);
    harness.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn third_party_clients_read_the_replayed_baltic_surge_as_the_open_data_api_serves_it() {
    let harness = Harness::start().await;
    let ingest = harness.ingest_ready("ingest-sta", None).await;
    let fixture = "tests/fixtures/baltic-surge-2023/sea_level_10min.csv";
    let format = tidemark_sensors_sim::replay::Format::BalticSurge;
    let gauges = tidemark_sensors_sim::replay::read(format, &repo(fixture))
        .unwrap()
        .reference
        .sensors
        .len();
    replay_all(&harness, format, "baltic-surge", fixture).await;
    let config = config(&harness);
    let api = Api::start(&harness, &config).await;

    // Flensburg's gauge posts one Observation through the client, with a device key.
    let device: String = sql(&harness)
        .await
        .query_one(
            "SELECT d.key FROM sensors s JOIN devices d ON d.id = s.device_id WHERE s.key = $1",
            &[&"flensburg.sea_level"],
        )
        .await
        .unwrap()
        .get(0);
    let scope = tidemark_api::auth::KeyScope {
        device: Some(device),
        ..Default::default()
    };
    let (key, _) = tidemark_api::auth::create_scoped_key(
        &api.state.store,
        tidemark_store::keys::Role::Device,
        scope,
        "test".to_owned(),
        None,
        &tidemark_api::auth::Actor::cli(),
    )
    .await
    .unwrap();
    // Off the replay's whole-minute times, so that it is a new reading.
    let posted_at = DateTime::from_timestamp(Utc::now().timestamp() - 187, 123_000_000).unwrap();
    let output = tokio::process::Command::new("python3")
        .arg(repo("tests/clients/sta_frost.py"))
        .arg(format!("{}/sta/v1.1", api.base))
        .arg("flensburg.sea_level")
        .args([key, api_time(posted_at), "0.625".to_owned()])
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "frost-sta-client failed (scripts/test.sh installs it): {}",
        String::from_utf8_lossy(&output.stderr)
    );

    // What the open data API serves for Flensburg: the replay's readings and the posted one.
    let from = api_time(Utc::now() - ChronoDuration::days(60));
    let to = api_time(Utc::now() + ChronoDuration::days(1));
    let readings = ok(
        &api,
        &format!("/api/v1/sensors/flensburg.sea_level/readings?from={from}&to={to}&limit=100000"),
    )
    .await;
    let expected: Vec<Value> = readings["readings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| serde_json::json!([r["ts"], r["value"]]))
        .collect();
    assert_eq!(expected.len(), 1585);
    assert!(expected.contains(&serde_json::json!([api_time(posted_at), 0.625])));
    let read: Value = serde_json::from_slice(&output.stdout).unwrap();
    let stations: Vec<&str> = read["things"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert!(stations.contains(&"Flensburg"), "{stations:?}");
    assert_eq!(
        read["datastreams"].as_array().unwrap().len(),
        gauges,
        "one datastream per replayed gauge"
    );
    assert_eq!(read["unit"], "m");
    let flensburg = sensor_id(&harness, "flensburg.sea_level").await;
    assert_eq!(
        read["created"],
        Value::from(format!("{flensburg}-{}", posted_at.timestamp_micros()))
    );
    // Every value at its time, in order, across the client's pages of 500.
    assert_eq!(read["observations"].as_array().unwrap(), &expected);

    // A second, independent client reads the same (from a directory of its own, where it keeps
    // its settings).
    let workdir = std::env::temp_dir().join(format!("tidemark-stapy-{}", std::process::id()));
    std::fs::create_dir_all(&workdir).unwrap();
    let output = tokio::process::Command::new("python3")
        .arg(repo("tests/clients/sta_stapy.py"))
        .arg(format!("{}/sta/v1.1", api.base))
        .arg("flensburg.sea_level")
        .current_dir(&workdir)
        .output()
        .await
        .unwrap();
    std::fs::remove_dir_all(&workdir).unwrap();
    assert!(
        output.status.success(),
        "stapy failed (scripts/test.sh installs it): {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let second: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(second["datastreams"], read["datastreams"]);
    assert_eq!(second["observations"].as_array().unwrap(), &expected);
    ingest.stop().await;
    harness.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_past_its_time_limit_is_cancelled_with_an_answer_that_says_so() {
    let harness = Harness::start().await;
    let config = with_stations(&harness).await;
    let config = tidemark::config::Config {
        api: tidemark_api::ApiConfig {
            sta_query_timeout: std::time::Duration::from_millis(1),
            ..config.api.clone()
        },
        ..config
    };
    let api = Api::start(&harness, &config).await;
    let id = sensor_id(&harness, SENSOR).await;
    let rows: Vec<ReadingRow> = (0..300_000)
        .map(|i| ReadingRow {
            sensor_id: id,
            ts: start() + ChronoDuration::seconds(i),
            value: (i % 1000) as f64 / 1000.0,
            quality: 0,
        })
        .collect();
    store_readings(&harness, &rows).await;
    // No index serves a filter on the result: it reads through the readings, past 1 ms.
    let (status, body) = get(
        &api,
        "/sta/v1.1/Observations?$filter=result mul 2 gt 5&$count=true",
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains("time limit"),
        "{body}"
    );
    // The limit is SensorThings' alone, and the pool's connections are fine after it.
    let (status, _) = get(&api, &format!("/api/v1/sensors/{SENSOR}/readings?from=2023-10-19T00:00:00Z&to=2023-10-20T00:00:00Z&limit=10")).await;
    assert_eq!(status, 200);
    api.shutdown.cancel();
    harness.finish().await;
}

/// Posts `body` (raw text) to `path` with `auth` as the Authorization header; returns the status,
/// the `Location` header and the body.
async fn post(
    api: &Api,
    path: &str,
    auth: Option<&str>,
    body: &str,
) -> (u16, Option<String>, Value) {
    let mut request = api
        .http
        .post(api.url(path))
        .header("content-type", "application/json")
        .body(body.to_owned());
    if let Some(auth) = auth {
        request = request.header("authorization", auth);
    }
    sent(request).await
}

/// The status, `Location` header and body of a create.
async fn sent(request: reqwest::RequestBuilder) -> (u16, Option<String>, Value) {
    let (status, _, text, headers) = checked_with_headers(
        "POST",
        "/sta/v1.1/Observations",
        request.send().await.unwrap(),
    )
    .await;
    let location = headers
        .get("location")
        .map(|l| l.to_str().unwrap().to_owned());
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, location, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_key_creates_observations_through_the_ingest_write_path_and_refusals_are_kept() {
    let (harness, api, flensburg) = loaded().await;
    let kappeln = sensor_id(&harness, "kappeln.sea_level").await;
    let operator = api.key(tidemark_store::keys::Role::Operator, None).await;
    let researcher = api.key(tidemark_store::keys::Role::Researcher, None).await;

    // An operator makes a device key for Flensburg's gauge; a device key names a registered device.
    let keys = "/api/v1/keys";
    let (status, made) = api
        .call(
            reqwest::Method::POST,
            keys,
            Some(&operator),
            Some(serde_json::json!({"role": "device", "device": "flensburg-gauge"})),
        )
        .await;
    assert_eq!(
        (status, &made["device"]),
        (201, &Value::from("flensburg-gauge")),
        "{made}"
    );
    let key = made["key"].as_str().unwrap().to_owned();
    let bearer = format!("Bearer {key}");
    for (body, parameter) in [
        (serde_json::json!({"role": "device"}), "device"),
        (
            serde_json::json!({"role": "device", "device": "no-such-gauge"}),
            "device",
        ),
        (
            serde_json::json!({"role": "researcher", "device": "flensburg-gauge"}),
            "device",
        ),
    ] {
        let (status, refused) = api
            .call(reqwest::Method::POST, keys, Some(&operator), Some(body))
            .await;
        assert_eq!(
            (status, &refused["parameter"]),
            (400, &Value::from(parameter)),
            "{refused}"
        );
    }

    let at = |minutes: i64| {
        let t = Utc::now() - ChronoDuration::minutes(minutes);
        DateTime::from_timestamp(t.timestamp(), 0).unwrap()
    };
    let observation = |t: DateTime<Utc>, result: f64, datastream: i32| {
        serde_json::json!({
            "phenomenonTime": api_time(t), "result": result,
            "Datastream": {"@iot.id": datastream},
        })
        .to_string()
    };

    // Created: 201, the new Observation's address, and the Observation as a read gives it.
    let t1 = at(30);
    let (status, location, created) = post(
        &api,
        "/sta/v1.1/Observations",
        Some(&bearer),
        &observation(t1, 1.25, flensburg),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let location = location.expect("a Location header");
    assert_eq!(
        location,
        api.url(&format!(
            "/sta/v1.1/Observations('{flensburg}-{}')",
            t1.timestamp_micros()
        ))
    );
    assert_eq!(created["@iot.selfLink"], Value::from(location.clone()));
    assert_eq!(ok(&api, &location).await, created);
    assert_eq!(
        (&created["result"], &created["resultQuality"]),
        (&Value::from(1.25), &serde_json::json!(["good"]))
    );
    // It is a reading like any other: the open data API serves it.
    let from = api_time(t1);
    let raw = ok(
        &api,
        &format!("/api/v1/sensors/{SENSOR}/readings?from={from}&limit=10"),
    )
    .await;
    assert_eq!(raw["readings"][0]["value"], Value::from(1.25), "{raw}");
    assert_eq!(raw["readings"].as_array().unwrap().len(), 1, "{raw}");

    // The same again is found stored (200, the same address); another value at that time is a
    // conflict.
    let (status, again, body) = post(
        &api,
        "/sta/v1.1/Observations",
        Some(&bearer),
        &observation(t1, 1.25, flensburg),
    )
    .await;
    assert_eq!(
        (status, again.as_deref()),
        (200, Some(location.as_str())),
        "{body}"
    );
    assert_eq!(body, created);
    let conflicting = observation(t1, 1.5, flensburg);
    let (status, _, body) = post(&api, "/sta/v1.1/Observations", Some(&bearer), &conflicting).await;
    assert_eq!(status, 409, "{body}");

    // Through the Datastream's own collection, with a quality flag, and with Basic credentials
    // whose password is the key (as many SensorThings clients send them); without a time, the
    // time of receipt.
    let before = Utc::now();
    let (status, _, body) = sent(
        api.http
            .post(api.url(&format!("/sta/v1.1/Datastreams({flensburg})/Observations")))
            .basic_auth("flensburg-gauge", Some(&key))
            .body(r#"{"result": 0.75, "resultQuality": "suspect"}"#),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["resultQuality"], serde_json::json!(["device_suspect"]));
    let time: DateTime<Utc> = body["phenomenonTime"].as_str().unwrap().parse().unwrap();
    assert!(time >= before && time <= Utc::now(), "{body}");

    // Refused, each answered with its reason and kept with the device's rejections, as a
    // refused MQTT message is.
    let old = Utc::now() - ChronoDuration::days(500);
    let refusals: Vec<(String, u16, &str)> = vec![
        ("{\"result\": ".to_owned(), 400, "malformed"),
        (observation(at(20), 1e6, flensburg), 400, "out_of_range"),
        (observation(old, 1.0, flensburg), 400, "too_old"),
        (observation(at(-60), 1.0, flensburg), 400, "future"),
        (observation(at(20), 1.0, 999_999), 400, "unknown_sensor"),
        (observation(at(20), 1.0, kappeln), 403, "wrong_device"),
        (
            format!("{{\"result\": 1, \"validTime\": \"{}\", \"Datastream\": {{\"@iot.id\": {flensburg}}}}}", api_time(at(5))),
            501,
            "unsupported",
        ),
    ];
    for (body, status, _) in &refusals {
        let (got, _, answer) = post(&api, "/sta/v1.1/Observations", Some(&bearer), body).await;
        assert_eq!(got, *status, "{body}: {answer}");
        assert!(answer["detail"].is_string(), "{answer}");
    }
    let kept = harness.store.recent_rejections(100).await.unwrap();
    let mut expected: Vec<(String, &str)> = refusals
        .iter()
        .map(|(body, _, code)| (body.clone(), *code))
        .chain([(conflicting.clone(), "conflict")])
        .collect();
    let mut stored: Vec<(String, &str)> = kept
        .iter()
        .map(|r| {
            assert_eq!(r.device.as_deref(), Some("flensburg-gauge"));
            assert_eq!(r.topic, "/sta/v1.1/Observations");
            (
                String::from_utf8(r.payload.clone()).unwrap(),
                r.reason_code.as_str(),
            )
        })
        .collect();
    expected.sort();
    stored.sort();
    assert_eq!(stored, expected);

    // Not a device's request: nothing is kept.
    let body = observation(at(10), 1.0, flensburg);
    let researcher = format!("Bearer {researcher}");
    for (auth, status) in [
        (None, 401),
        (Some(researcher.as_str()), 403),
        (Some("Bearer tmk_000000000000_x"), 401),
    ] {
        let (got, _, answer) = post(&api, "/sta/v1.1/Observations", auth, &body).await;
        assert_eq!(got, status, "{answer}");
    }
    // Only Observations are created; a body past 64 KiB is refused before it is read whole.
    let (status, _, answer) = post(&api, "/sta/v1.1/Things", Some(&bearer), "{}").await;
    assert_eq!(
        (status, &answer["parameter"]),
        (501, &Value::from("path")),
        "{answer}"
    );
    let (status, _, answer) = post(
        &api,
        "/sta/v1.1/Datastreams(999999)/Observations",
        Some(&bearer),
        &body,
    )
    .await;
    assert_eq!(status, 404, "{answer}");
    let huge = format!("{{\"result\": 1, \"pad\": \"{}\"}}", "x".repeat(70_000));
    let (status, _, answer) = post(&api, "/sta/v1.1/Observations", Some(&bearer), &huge).await;
    assert_eq!(status, 413, "{answer}");
    assert_eq!(
        harness.store.recent_rejections(100).await.unwrap().len(),
        kept.len()
    );

    // A disabled device's key posts nothing.
    sql(&harness)
        .await
        .execute(
            "UPDATE devices SET enabled = false WHERE key = 'flensburg-gauge'",
            &[],
        )
        .await
        .unwrap();
    let (status, _, answer) = post(&api, "/sta/v1.1/Observations", Some(&bearer), &body).await;
    assert_eq!(status, 403, "{answer}");
    let latest = &harness.store.recent_rejections(1).await.unwrap()[0];
    assert_eq!(latest.reason_code, "unknown_device");
    api.shutdown.cancel();
    harness.finish().await;
}
