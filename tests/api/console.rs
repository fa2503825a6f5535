//! The admin console in a real browser (Debian's headless Chromium, driven
//! over the DevTools protocol by `browser.rs`) against the real server:
//! sign-in, stats against the API and the CSV, requests, live instances,
//! refusals for non-admins, and the session kept alive.
//!
//! Screenshots of every page at a desktop and a phone width are written to
//! `target/console-screenshots/` for a person to look at.

use std::collections::BTreeMap;
use std::path::PathBuf;

use chrono::{TimeDelta, Utc};
use entity::{instance_event, session, work_request};
use rand::SeedableRng;
use rand::rngs::StdRng;
use sea_orm::sea_query::Expr;
use sea_orm::{ActiveValue::Set, EntityTrait};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::browser::{Browser, Page, Viewport};
use crate::stats::{STATS, idle_models, random_request};
use crate::support::{Db, PASSWORD, TestApp, sleepy};

const MODELS: [&str; 3] = ["m-a", "m-b", "m-c"];

fn screenshot_path(name: &str, db: Db) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("target/console-screenshots")
        .join(format!("{name}-{}.png", format!("{db:?}").to_lowercase()))
}

/// Screenshots of the page as it is, at both widths.
async fn screenshots(page: &Page, name: &str, db: Db) {
    page.screenshot(&screenshot_path(&format!("{name}-desktop"), db))
        .await;
    page.set_viewport(Viewport::PHONE).await;
    page.screenshot(&screenshot_path(&format!("{name}-phone"), db))
        .await;
    page.set_viewport(Viewport::DESKTOP).await;
}

/// Stores `count` random requests (see `stats.rs`) from `users` and
/// `sessions` on the models of [`MODELS`], one every `every_minutes`
/// going back from now.
async fn seed_requests(
    app: &TestApp,
    count: i64,
    every_minutes: i64,
    users: &[Uuid],
    sessions: &[Uuid],
) {
    let mut rng = StdRng::seed_from_u64(crate::stats::seed());
    let now = Utc::now();
    let requests: Vec<_> = (0..count)
        .map(|i| {
            let at = now - TimeDelta::minutes(i * every_minutes);
            random_request(&mut rng, at, users, sessions)
        })
        .collect();
    work_request::Entity::insert_many(requests.iter().map(|r| r.row()))
        .exec(&app.state.db)
        .await
        .expect("seeded");
}

/// Signs in through the form, starting from `path`.
async fn sign_in(page: &Page, app: &TestApp, path: &str, login: &str) {
    page.goto(&app.url(path)).await;
    page.wait_for(
        "location.pathname === '/console/signin'",
        "the sign-in page",
    )
    .await;
    page.fill("#login", login).await;
    page.fill("#password", PASSWORD).await;
    page.click(".signin button[type=submit]").await;
    page.wait_for(
        "location.pathname !== '/console/signin'",
        "leaving the sign-in page",
    )
    .await;
}

/// Waits until no call is in flight.
async fn settled(page: &Page) {
    page.wait_for(
        "document.body.getAttribute('aria-busy') === 'false'",
        "the console's calls to finish",
    )
    .await;
}

fn assert_no_problems(page: &Page) {
    let problems = page.problems();
    assert!(problems.is_empty(), "the page reported: {problems:#?}");
}

/// A user's id, from its token.
async fn user_id(app: &TestApp, token: &str) -> Uuid {
    let body = app.gql_as(token, "{ me { id } }", json!({})).await;
    body["data"]["me"]["id"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no id in {body}"))
}

/// A figure as both the table and the API write it: numbers by value.
fn normal(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::Number(n) => n.as_f64().map(number).unwrap_or_default(),
        Value::String(s) => s.parse::<f64>().map(number).unwrap_or_else(|_| s.clone()),
        other => other.to_string(),
    }
}

/// Integers exactly; fractions (means, percentiles) to a millionth, since
/// serde_json's float parsing may differ from the browser's in the last bit.
fn number(f: f64) -> String {
    if f.fract() == 0.0 {
        f.to_string()
    } else {
        format!("{f:.6}")
    }
}

/// A `stats` row flattened to the CSV's columns.
fn flatten(row: &Value, grouping: &[&str]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (dimension, key) in [
        ("MODEL", "modelId"),
        ("AUTH_TYPE", "authType"),
        ("PRINCIPAL", "principalId"),
        ("DAY", "day"),
    ] {
        if grouping.contains(&dimension) {
            out.insert(key.to_owned(), normal(&row[key]));
        }
    }
    for key in [
        "totalCount",
        "successCount",
        "failCount",
        "cancelledCount",
        "activeCount",
        "jobTimeP50Ms",
        "jobTimeP95Ms",
        "rolledUpCount",
    ] {
        out.insert(key.to_owned(), normal(&row[key]));
    }
    for name in ["jobTime", "totalTime", "queueTime"] {
        for (suffix, field) in [
            ("TotalMs", "totalMs"),
            ("MinMs", "minMs"),
            ("MaxMs", "maxMs"),
            ("AvgMs", "avgMs"),
            ("Count", "count"),
        ] {
            out.insert(format!("{name}{suffix}"), normal(&row[name][field]));
        }
    }
    out
}

/// The stats table as the page shows it: one map per row, in order, of
/// column to raw figure.
async fn table(page: &Page) -> Vec<BTreeMap<String, String>> {
    let rows = page
        .eval(
            "Array.from(document.querySelectorAll('#stats-table tbody tr'), (tr) => \
             Object.fromEntries(Array.from(tr.cells, (td) => [td.dataset.column, td.dataset.value])))",
        )
        .await;
    rows.as_array()
        .expect("rows")
        .iter()
        .map(|row| {
            row.as_object()
                .expect("a row")
                .iter()
                .map(|(k, v)| (k.clone(), normal(v)))
                .collect()
        })
        .collect()
}

/// What `stats` answers for `filter` and `grouping`, flattened.
async fn api_stats(
    app: &TestApp,
    token: &str,
    filter: Value,
    grouping: &[&str],
) -> Vec<BTreeMap<String, String>> {
    let body = app
        .gql_as(
            token,
            STATS,
            json!({ "filter": filter, "groupBy": grouping }),
        )
        .await;
    body["data"]["stats"]
        .as_array()
        .unwrap_or_else(|| panic!("no stats in {body}"))
        .iter()
        .map(|row| flatten(row, grouping))
        .collect()
}

/// CSV text as rows of column → value, the header naming the columns.
fn parse_csv(text: &str) -> (Vec<String>, Vec<BTreeMap<String, String>>) {
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    let header: Vec<String> = reader
        .headers()
        .expect("a header")
        .iter()
        .map(str::to_owned)
        .collect();
    let rows = reader
        .records()
        .map(|record| {
            let record = record.expect("a CSV record");
            header
                .iter()
                .zip(record.iter())
                .map(|(k, v)| (k.clone(), normal(&Value::String(v.to_owned()))))
                .collect()
        })
        .collect();
    (header, rows)
}

db_test!(an_admin_filters_stats_sorts_them_and_downloads_what_is_shown, db => {
    let app = TestApp::spawn(db).await;
    let token = app.admin("root").await;
    idle_models(&app, &MODELS).await;
    let alice = user_id(&app, &app.signup("alice").await).await;
    let bob = user_id(&app, &app.signup("bob").await).await;
    let sessions: Vec<Uuid> = (0..3).map(|_| Uuid::new_v4()).collect();
    let now = Utc::now();
    seed_requests(&app, 300, 137, &[alice, bob], &sessions).await;

    let browser = Browser::launch().await;
    let page = browser.page(Viewport::DESKTOP).await;
    sign_in(&page, &app, "/console/", "root").await;
    page.wait_for("location.pathname === '/console/stats'", "the stats page, the first an admin may open").await;
    settled(&page).await;
    page.wait_text(".who", "root").await;

    // The first view: per model, every request, in the browser's zone.
    let zone = page.eval("Intl.DateTimeFormat().resolvedOptions().timeZone").await;
    let shown = table(&page).await;
    assert_eq!(shown.len(), 3, "{shown:?}");
    assert_eq!(shown, api_stats(&app, &token, json!({ "timeZone": zone }), &["MODEL"]).await);

    // Narrow it down through the form.
    let from = (now - TimeDelta::days(12)).date_naive().to_string();
    let to = (now - TimeDelta::days(2)).date_naive().to_string();
    page.select("#stats-auth", &["USER"]).await;
    page.fill("#stats-zone", "Asia/Kolkata").await;
    page.fill("#stats-from", &from).await;
    page.fill("#stats-to", &to).await;
    page.select("#stats-models", &["m-a", "m-b"]).await;
    page.click("#group-DAY").await;
    settled(&page).await;
    page.wait_for(
        "document.querySelector('#stats-principals optgroup')?.label === 'Users'",
        "the principal list to offer users only",
    ).await;
    let offered = page.eval("Array.from(document.querySelectorAll('#stats-principals option'), (o) => o.value)").await;
    assert!(
        offered.as_array().expect("options").iter().all(|o| o.as_str().is_some_and(|v| v.starts_with("user:"))),
        "anonymous sessions offered for users' requests: {offered}"
    );
    page.select("#stats-principals", &[&format!("user:{alice}")]).await;
    settled(&page).await;

    let filter = json!({
        "authType": "USER", "timeZone": "Asia/Kolkata", "from": from, "to": to,
        "modelIds": ["m-a", "m-b"], "userIds": [alice],
    });
    let expected = api_stats(&app, &token, filter.clone(), &["MODEL", "DAY"]).await;
    assert!(expected.len() > 2, "too few rows to show anything: {expected:?}");
    assert_eq!(table(&page).await, expected);
    // What a person reads: the model's name, the counts as numbers.
    let first_row = page
        .eval("Array.from(document.querySelectorAll('#stats-table tbody tr:first-child td'), (td) => td.innerText)")
        .await;
    assert_eq!(first_row[0], expected[0]["modelId"].as_str());
    assert_eq!(first_row[1], expected[0]["day"].as_str());
    assert_eq!(first_row[2], expected[0]["totalCount"].as_str());

    // The view lives in the URL: opening it again shows the same.
    let search = page.eval("location.search").await;
    let search = search.as_str().expect("search").to_owned();
    for part in ["authType=USER", "timeZone=Asia%2FKolkata", "model=m-a", "model=m-b", "groupBy=MODEL%2CDAY", &format!("user={alice}")] {
        assert!(search.contains(part), "{part} missing from {search}");
    }
    page.goto(&app.url(&format!("/console/stats{search}"))).await;
    settled(&page).await;
    page.wait_for("document.querySelectorAll('#stats-table tbody tr').length > 0", "the table again").await;
    assert_eq!(table(&page).await, expected);
    assert_eq!(page.eval("document.getElementById('stats-auth').value").await, "USER");
    assert_eq!(page.eval("document.getElementById('stats-from').value").await, from.as_str());
    assert_eq!(page.eval("document.getElementById('group-DAY').checked").await, true);

    // Sorted by failures, most first.
    page.click("button.sort[data-column=failCount]").await;
    let sorted = table(&page).await;
    let fails: Vec<f64> = sorted.iter().map(|r| r["failCount"].parse().expect("a number")).collect();
    assert!(fails.windows(2).all(|w| w[0] >= w[1]), "not sorted: {fails:?}");
    assert!(page.eval("location.search").await.as_str().expect("search").contains("sort=-failCount"));

    // The CSV holds exactly the rows shown, in their order...
    let downloads = tempfile::tempdir().expect("temp dir");
    page.allow_downloads(downloads.path()).await;
    page.click("#stats-csv").await;
    let file = page.wait_download().await;
    assert_eq!(
        file.file_name().and_then(|n| n.to_str()),
        Some(format!("modelfleet-stats-{from}_{to}.csv").as_str())
    );
    let text = std::fs::read_to_string(&file).expect("the CSV");
    let (header, rows) = parse_csv(&text);
    assert_eq!(rows, sorted);
    // ... and the same as the server's own export of that view.
    let query = format!(
        "groupBy=MODEL,DAY&authType=USER&timeZone=Asia%2FKolkata&from={from}&to={to}&modelId=m-a&modelId=m-b&userId={alice}"
    );
    let server = app
        .http
        .get(app.url(&format!("/api/stats.csv?{query}")))
        .bearer_auth(&token)
        .send()
        .await
        .expect("export")
        .text()
        .await
        .expect("CSV");
    let (server_header, mut server_rows) = parse_csv(&server);
    assert_eq!(header, server_header);
    let mut ours = rows.clone();
    ours.sort();
    server_rows.sort();
    assert_eq!(ours, server_rows);

    // A bad range is refused with the server's words, where it happened;
    // the loading bar shows while the page asks.
    page.eval(
        "window.sawLoading = false; new MutationObserver(() => { \
         if (!document.getElementById('loading').hidden) window.sawLoading = true; }) \
         .observe(document.getElementById('loading'), { attributes: true }); true",
    )
    .await;
    page.fill("#stats-from", &to).await;
    page.fill("#stats-to", &from).await;
    settled(&page).await;
    let refused = app
        .gql_as(&token, STATS, json!({ "filter": { "from": to, "to": from } }))
        .await;
    // The field and its rule, as the server words them.
    let rule = refused["errors"][0]["extensions"]["fields"]["from"][0].as_str().expect("a refusal");
    let message = format!("from: {rule}");
    page.wait_text("#main .error", &message).await;
    assert_eq!(page.eval("window.sawLoading").await, true);
    assert_eq!(page.eval("document.querySelectorAll('#stats-table tbody tr').length").await, 0);
    page.clear_problems();

    page.fill("#stats-to", &to).await;
    settled(&page).await;
    screenshots(&page, "stats", db).await;
    assert_no_problems(&page);
});

/// The ids of one page of `requests` (25) and the cursor after it.
async fn requests_page(
    app: &TestApp,
    token: &str,
    filter: Value,
    after: Option<String>,
) -> (Vec<String>, Option<String>) {
    let body = app
        .gql_as(
            token,
            "query($f: RequestsFilter, $a: String) { requests(filter: $f, first: 25, after: $a) { \
             pageInfo { endCursor } nodes { id } } }",
            json!({ "f": filter, "a": after }),
        )
        .await;
    let ids = body["data"]["requests"]["nodes"]
        .as_array()
        .unwrap_or_else(|| panic!("no requests in {body}"))
        .iter()
        .map(|n| n["id"].as_str().expect("id").to_owned())
        .collect();
    let cursor = body["data"]["requests"]["pageInfo"]["endCursor"]
        .as_str()
        .map(str::to_owned);
    (ids, cursor)
}

/// The ids of the requests the page lists, in order.
async fn shown_ids(page: &Page) -> Vec<String> {
    let ids = page
        .eval(
            "Array.from(document.querySelectorAll('#requests-table tbody tr[data-id]'), \
             (tr) => tr.dataset.id)",
        )
        .await;
    ids.as_array()
        .expect("ids")
        .iter()
        .map(|v| v.as_str().expect("id").to_owned())
        .collect()
}

db_test!(the_requests_page_filters_and_pages_without_private_data, db => {
    let app = TestApp::spawn(db).await;
    let token = app.admin("root").await;
    idle_models(&app, &MODELS).await;
    let alice = user_id(&app, &app.signup("alice").await).await;
    let sessions: Vec<Uuid> = (0..2).map(|_| Uuid::new_v4()).collect();
    seed_requests(&app, 60, 7, &[alice], &sessions).await;
    let browser = Browser::launch().await;
    let page = browser.page(Viewport::DESKTOP).await;
    sign_in(&page, &app, "/console/requests?size=25", "root").await;
    page.wait_for("location.pathname === '/console/requests'", "back to the requests page").await;
    settled(&page).await;
    let (first, cursor) = requests_page(&app, &token, json!({}), None).await;
    assert_eq!(shown_ids(&page).await, first);
    page.click("#requests-older").await;
    settled(&page).await;
    let (second, _) = requests_page(&app, &token, json!({}), cursor).await;
    assert_eq!(shown_ids(&page).await, second);
    page.wait_text("#requests-page", "Page 2").await;
    page.click("#requests-newer").await;
    settled(&page).await;
    assert_eq!(shown_ids(&page).await, first);

    // Filters, one through a row's "who" button.
    page.select("#requests-model", &["m-b"]).await;
    settled(&page).await;
    assert_eq!(shown_ids(&page).await, requests_page(&app, &token, json!({ "modelId": "m-b" }), None).await.0);
    page.click("#requests-table button.link[title^='Only user']").await;
    settled(&page).await;
    assert_eq!(page.eval("document.getElementById('requests-user').value").await, alice.to_string().as_str());
    let expected = requests_page(&app, &token, json!({ "modelId": "m-b", "userId": alice }), None).await.0;
    assert!(!expected.is_empty());
    assert_eq!(shown_ids(&page).await, expected);
    let search = page.eval("location.search").await;
    assert!(search.as_str().expect("search").contains(&format!("user={alice}")), "{search}");
    page.select("#requests-status", &["SUCCEEDED"]).await;
    settled(&page).await;
    let succeeded = requests_page(&app, &token, json!({ "modelId": "m-b", "userId": alice, "status": "SUCCEEDED" }), None).await.0;
    assert_eq!(shown_ids(&page).await, succeeded);

    // Nothing private reaches the page: the seeded inputs say "secret".
    let html = page.eval("document.documentElement.outerHTML").await;
    assert!(!html.as_str().expect("html").contains("secret"));
    screenshots(&page, "requests", db).await;

    // On a phone the menu hides behind a button.
    page.set_viewport(Viewport::PHONE).await;
    assert_eq!(page.eval("getComputedStyle(document.getElementById('sidebar')).display").await, "none");
    page.click("#menu-button").await;
    page.wait_for("getComputedStyle(document.getElementById('sidebar')).display !== 'none'", "the menu to open").await;
    page.screenshot(&screenshot_path("menu-phone", db)).await;
    page.press("Escape").await;
    page.wait_for("getComputedStyle(document.getElementById('sidebar')).display === 'none'", "Escape to close the menu").await;
    page.click("#menu-button").await;
    page.click("#menu a[href='/console/stats']").await;
    page.wait_for("location.pathname === '/console/stats'", "the stats page from the menu").await;
    assert_eq!(page.eval("getComputedStyle(document.getElementById('sidebar')).display").await, "none");
    settled(&page).await;
    assert_no_problems(&page);
});

db_test!(instances_appear_and_change_live_and_stop_from_the_console, db => {
    let app = TestApp::spawn_with(db, |c| {
        c.models = vec![sleepy("live", |m| m.max_instances = 1)]
    })
    .await;
    let admin = app.admin("root").await;
    let browser = Browser::launch().await;
    let page = browser.page(Viewport::DESKTOP).await;
    sign_in(&page, &app, "/console/instances", "root").await;
    page.wait_for("location.pathname === '/console/instances'", "the instances page").await;
    page.wait_text("#instances-live", "live").await;
    page.wait_text("#instances-table", "No instance matches").await;

    // A request starts an instance; the page follows it to BUSY without
    // being reloaded.
    let token = app.anonymous().await;
    let request = app.submit(&token, "live", json!({ "seconds": 60 })).await;
    page.wait_for(
        "document.querySelector('#instances-table tbody tr[data-id]') !== null",
        "the new instance to appear",
    ).await;
    page.wait_for_secs(
        "document.querySelector('#instances-table tbody tr[data-id]')?.dataset.status === 'BUSY'",
        "the instance to become busy, live",
        240,
    ).await;
    page.wait_for(&format!("document.querySelector('#instances-table td[data-request=\"{request}\"]') !== null"), "the request on its instance").await;
    // Filters: by status, then by start time.
    page.select("#instances-statuses", &["READY"]).await;
    page.wait_text("#instances-table", "No instance matches").await;
    page.select("#instances-statuses", &["BUSY", "READY"]).await;
    page.wait_for(&format!("document.querySelector('#instances-table td[data-request=\"{request}\"]') !== null"), "the request on its instance").await;
    page.fill("#instances-from", "2099-01-01T00:00").await;
    page.wait_text("#instances-table", "No instance matches").await;
    assert!(page.eval("location.search").await.as_str().expect("search").contains("startedFrom=2099"));
    page.fill("#instances-from", "").await;
    page.select("#instances-statuses", &[]).await;
    page.wait_for(&format!("document.querySelector('#instances-table td[data-request=\"{request}\"]') !== null"), "the request on its instance").await;
    let id = page
        .eval("document.querySelector('#instances-table tbody tr[data-id]').dataset.id")
        .await
        .as_str()
        .expect("id")
        .to_owned();

    // Its events, with their raw JSON (a backend event, as the Kubernetes
    // backend records them; markup in it stays text).
    instance_event::Entity::insert(instance_event::ActiveModel {
        instance_id: Set(id.parse().expect("uuid")),
        at: Set(Utc::now() - TimeDelta::seconds(1)),
        kind: Set("Warning".to_owned()),
        reason: Set("BackOff".to_owned()),
        message: Set("<b>not bold</b>".to_owned()),
        raw: Set(Some(json!({ "kind": "Event", "note": "<img src=x>" }))),
        ..Default::default()
    })
    .exec(&app.state.db)
    .await
    .expect("event stored");
    page.click("#instances-table .events-button").await;
    page.wait_text("#instance-events", "Assigned request").await;
    page.wait_text("#instance-events li.warning", "<b>not bold</b>").await;
    let raw = page.eval("document.querySelector('#instance-events li.warning details.raw pre').textContent").await;
    let raw: Value = serde_json::from_str(raw.as_str().expect("raw text")).expect("raw JSON");
    assert_eq!(raw, json!({ "kind": "Event", "note": "<img src=x>" }));
    assert_eq!(page.eval("document.querySelectorAll('#instance-events b, #instance-events img').length").await, 0);
    screenshots(&page, "instances", db).await;

    // Stopping asks first; keeping it running does nothing.
    page.click("#instances-table .stop-button").await;
    page.wait_for("document.getElementById('stop-dialog').open", "the confirmation").await;
    page.click("#stop-cancel").await;
    page.wait_for("!document.getElementById('stop-dialog').open", "the dialog to close").await;
    assert_eq!(page.eval("document.querySelector('#instances-table tbody tr[data-id]').dataset.status").await, "BUSY");
    page.click("#instances-table .stop-button").await;
    page.fill("#stop-reason", "seen enough").await;
    page.click("#stop-confirm").await;
    page.wait_for("!document.getElementById('instances-notice').hidden", "the stop's message").await;
    // The open events list follows the instance live: the stop request
    // and its reason arrive as an event.
    page.wait_text("#instance-events", "seen enough").await;
    // The reason is recorded once the instance has stopped.
    app.eventually("the stop and its reason", 60, || async {
        let stopped = app
            .gql_as(&admin, "query($id: ID!) { instance(id: $id) { status stopReason } }", json!({ "id": id }))
            .await;
        stopped["data"]["instance"]["stopReason"].as_str().is_some_and(|r| r.contains("seen enough"))
    })
    .await;
    // The stopped instance leaves the live list, and shows with the
    // stopped ones.
    page.wait_for_secs(
        &format!("document.querySelector('#instances-table tr[data-id=\"{id}\"]') === null"),
        "the stopped instance to leave the list",
        60,
    ).await;
    page.click("#instances-stopped").await;
    page.wait_for(
        &format!("document.querySelector('#instances-table tr[data-id=\"{id}\"]')?.dataset.status === 'STOPPED'"),
        "the stopped instance among the stopped ones",
    ).await;
    assert_no_problems(&page);

    // The playground, linked from the page, runs the same subscription.
    let link = page.eval("document.getElementById('instances-graphiql').href").await;
    let playground = browser.page(Viewport::DESKTOP).await;
    playground.goto(link.as_str().expect("a link")).await;
    playground.click(".graphiql-execute-button").await;
    app.submit(&token, "live", json!({ "seconds": 0.1 })).await;
    playground.wait_for_secs(
        "document.querySelector('.graphiql-response')?.innerText.includes('\"kind\"')",
        "a subscription result in GraphiQL",
        240,
    ).await;
});

db_test!(a_non_admin_sees_no_admin_page, db => {
    let app = TestApp::spawn(db).await;
    app.signup("walter").await;
    let browser = Browser::launch().await;
    let page = browser.page(Viewport::DESKTOP).await;
    sign_in(&page, &app, "/console/", "walter").await;
    page.wait_text("#main .refusal", "not one").await;
    page.wait_text(".who", "walter").await;
    let links = page.eval("Array.from(document.querySelectorAll('#menu a'), (a) => a.textContent)").await;
    assert_eq!(links, json!(["GraphiQL playground ↗"]));
    for (path, permission) in [("stats", "VIEW_STATS"), ("requests", "VIEW_ALL_REQUESTS"), ("instances", "MANAGE_INSTANCES")] {
        page.goto(&app.url(&format!("/console/{path}"))).await;
        page.wait_text("#main .refusal", permission).await;
        assert_eq!(page.eval("document.querySelectorAll('#main table').length").await, 0);
    }
    screenshots(&page, "refusal", db).await;
    assert_no_problems(&page);
});

db_test!(the_session_is_kept_alive_and_its_end_leads_back_to_sign_in, db => {
    // The shortest lifetime allowed: the console refreshes at half of it.
    let app = TestApp::spawn_with(db, |c| {
        c.auth.session_lifetime_secs = 60;
        c.auth.session_cache_ttl_secs = 1;
    })
    .await;
    app.admin("root").await;
    let browser = Browser::launch().await;
    let page = browser.page(Viewport::DESKTOP).await;
    sign_in(&page, &app, "/console/requests", "root").await;
    settled(&page).await;
    let cached = "JSON.parse(localStorage.getItem('modelfleet.console.viewer')).viewer.sessionExpiresAt";
    let first = page.eval(cached).await;
    screenshots(&page, "signed-in", db).await;

    // Thirty seconds on, the console has refreshed the session: a later
    // expiry, the same name.
    page.wait_for_secs(&format!("{cached} !== {first}"), "a refreshed session", 45).await;
    page.wait_text(".who", "root").await;
    // A reload keeps the name and the session.
    page.goto(&app.url("/console/requests")).await;
    page.wait_text(".who", "root").await;
    settled(&page).await;
    assert_eq!(page.eval("location.pathname").await, "/console/requests");

    // The session expires behind the console's back (as a machine asleep
    // past the expiry would find it); its next call finds out.
    let token = page.eval("localStorage.getItem('modelfleet.console.token')").await;
    let token = token.as_str().expect("token").to_owned();
    assert_eq!(page.eval("localStorage.getItem('modelfleet.token')").await, token.as_str(), "shared with the playground");
    session::Entity::update_many()
        .col_expr(session::Column::ExpiresAt, Expr::value(Utc::now() - TimeDelta::seconds(1)))
        .exec(&app.state.db)
        .await
        .expect("expired");
    // Past the server's session cache.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    page.click("#menu a[href='/console/stats']").await;
    page.wait_for("location.pathname === '/console/signin'", "the sign-in page").await;
    page.wait_text("#signin-reason", "Your session has expired").await;
    assert_eq!(page.eval("localStorage.getItem('modelfleet.console.token')").await, Value::Null);
    screenshots(&page, "signin", db).await;

    // Signing in again returns to the page that was open.
    page.fill("#login", "root").await;
    page.fill("#password", PASSWORD).await;
    page.click(".signin button[type=submit]").await;
    page.wait_for("location.pathname === '/console/stats'", "back on the stats page").await;
    settled(&page).await;
    assert_eq!(page.eval("document.getElementById('signin-reason')").await, Value::Null);

    // Signed out elsewhere while watching instances: the live connection
    // is closed by the server, and the console says why.
    page.click("#menu a[href='/console/instances']").await;
    page.wait_text("#instances-live", "live").await;
    let token = page.eval("localStorage.getItem('modelfleet.console.token')").await;
    let out = app.gql_as(token.as_str().expect("token"), "mutation { logout }", json!({})).await;
    assert_eq!(out["data"]["logout"], true);
    page.wait_for("location.pathname === '/console/signin'", "the sign-in page").await;
    page.wait_text("#signin-reason", "ended").await;

    // Signing out with the button says nothing about expiry.
    page.fill("#login", "root").await;
    page.fill("#password", PASSWORD).await;
    page.click(".signin button[type=submit]").await;
    page.wait_for("location.pathname === '/console/instances'", "back on the instances page").await;
    page.wait_text("#instances-live", "live").await;
    page.click("#signout").await;
    page.wait_for("location.pathname === '/console/signin'", "the sign-in page").await;
    settled(&page).await;
    assert_eq!(page.eval("document.getElementById('signin-reason')").await, Value::Null);
    assert_eq!(page.eval("localStorage.getItem('modelfleet.console.token')").await, Value::Null);
    // The session is gone on the server too.
    let token = token.as_str().expect("token");
    let me = app.gql_as(token, "{ me { id } }", json!({})).await;
    assert!(me["errors"].is_array(), "{me}");
});

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_is_served_under_a_strict_policy() {
    let app = TestApp::spawn(Db::Sqlite).await;
    let root = app.http.get(app.url("/")).send().await.expect("/");
    assert_eq!(root.url().path(), "/console/");
    let policy = root
        .headers()
        .get("content-security-policy")
        .and_then(|v| v.to_str().ok())
        .expect("a policy")
        .to_owned();
    assert!(
        policy.contains("script-src 'self'") && !policy.contains("unsafe"),
        "{policy}"
    );
    // Deep links get the page; unknown assets do not.
    let deep = app
        .http
        .get(app.url("/console/stats?groupBy=DAY"))
        .send()
        .await
        .expect("page");
    assert_eq!(deep.status(), 200);
    assert!(
        deep.text()
            .await
            .expect("html")
            .contains("/console/assets/app.js")
    );
    let missing = app
        .http
        .get(app.url("/console/assets/nope.js"))
        .send()
        .await
        .expect("asset");
    assert_eq!(missing.status(), 404);
    // A file that has not changed costs a 304.
    let app_js = app
        .http
        .get(app.url("/console/assets/app.js"))
        .send()
        .await
        .expect("app.js");
    assert_eq!(
        app_js.headers()["content-type"],
        "text/javascript; charset=utf-8"
    );
    let etag = app_js.headers()["etag"].clone();
    let again = app
        .http
        .get(app.url("/console/assets/app.js"))
        .header("if-none-match", etag)
        .send()
        .await
        .expect("app.js");
    assert_eq!(again.status(), 304);

    let off = TestApp::spawn_with(Db::Sqlite, |c| c.server.console = false).await;
    let gone = off
        .http
        .get(off.url("/console/"))
        .send()
        .await
        .expect("page");
    assert_eq!(gone.status(), 404);
}
