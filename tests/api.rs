//! The HTTP API against a real Postgres: submission, lookup, bulk, idempotency, auth,
//! and every kind of bad input (a 4xx with the JSON error shape, and nothing stored).

mod support;

use serde_json::{json, Value};
use sqlx::PgPool;
use support::{spawn_app, spawn_app_with};

async fn error_of(resp: reqwest::Response) -> (u16, String, String) {
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.expect("error bodies are JSON");
    let code = body["error"]["code"]
        .as_str()
        .expect("error.code")
        .to_owned();
    let message = body["error"]["message"]
        .as_str()
        .expect("error.message")
        .to_owned();
    (status, code, message)
}

#[sqlx::test]
async fn submit_text_and_hex_then_get(pool: PgPool) {
    let app = spawn_app(pool).await;

    let resp = app
        .post_json("/v1/jobs", &json!({"payload": "hello world"}))
        .await;
    assert_eq!(resp.status(), 201);
    let created: Value = resp.json().await.unwrap();
    assert_eq!(created["status"], "queued");
    let id = created["id"].as_i64().unwrap();

    let job: Value = app
        .get(&format!("/v1/jobs/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(job["id"], id);
    assert_eq!(job["status"], "queued");
    assert_eq!(job["payload_hex"], hex::encode("hello world"));
    for field in [
        "txid",
        "last_error",
        "processing_batch_id",
        "batch_seq",
        "sent_at",
        "confirmed_at",
    ] {
        assert!(job[field].is_null(), "{field} should be null: {job}");
    }
    assert_eq!(job["attempts"], 0);
    assert!(job["created_at"].as_str().unwrap().contains('T'));

    let resp = app
        .post_json("/v1/jobs", &json!({"payload_hex": "00FF10", "priority": 7}))
        .await;
    assert_eq!(resp.status(), 201);
    let id2 = resp.json::<Value>().await.unwrap()["id"].as_i64().unwrap();
    let job: Value = app
        .get(&format!("/v1/jobs/{id2}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(job["payload_hex"], "00ff10");
    assert_eq!(job["priority"], 7);

    let stored: Vec<u8> = sqlx::query_scalar("SELECT payload FROM publish_jobs WHERE id = $1")
        .bind(id2)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(stored, vec![0x00, 0xff, 0x10]);
}

#[sqlx::test]
async fn queue_counts_every_state(pool: PgPool) {
    let app = spawn_app(pool).await;
    let body: Value = app.get("/v1/queue").await.json().await.unwrap();
    assert_eq!(
        body,
        json!({"queued": 0, "processing_batch": 0, "sending": 0, "sent": 0, "failed": 0})
    );
    support::insert_queued(&app.pool, 3).await;
    sqlx::query("UPDATE publish_jobs SET status = 'failed', last_error = 'x' WHERE id = (SELECT min(id) FROM publish_jobs)")
        .execute(&app.pool)
        .await
        .unwrap();
    let body: Value = app.get("/v1/queue").await.json().await.unwrap();
    assert_eq!(body["queued"], 2);
    assert_eq!(body["failed"], 1);
}

#[sqlx::test]
async fn bulk_returns_ids_in_order_all_stored(pool: PgPool) {
    let app = spawn_app(pool).await;
    let jobs: Vec<Value> = (0..250)
        .map(|i| json!({"payload": format!("bulk-{i}")}))
        .collect();
    let resp = app
        .post_json("/v1/jobs/bulk", &json!({ "jobs": jobs }))
        .await;
    assert_eq!(resp.status(), 201);
    let ids: Vec<i64> =
        serde_json::from_value(resp.json::<Value>().await.unwrap()["ids"].clone()).unwrap();
    assert_eq!(ids.len(), 250);
    let stored: std::collections::HashMap<i64, Vec<u8>> = sqlx::query_as::<_, (i64, Vec<u8>)>(
        "SELECT id, payload FROM publish_jobs WHERE id = ANY($1)",
    )
    .bind(&ids)
    .fetch_all(&app.pool)
    .await
    .unwrap()
    .into_iter()
    .collect();
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(
            stored[id],
            format!("bulk-{i}").into_bytes(),
            "id {id} at position {i}"
        );
    }
    assert_eq!(app.job_count().await, 250);
}

#[sqlx::test]
async fn the_largest_bulk_is_accepted(pool: PgPool) {
    let app = spawn_app(pool).await;
    let jobs: Vec<Value> = (0..10_000)
        .map(|i| json!({"payload_hex": format!("{:0160x}", i)}))
        .collect();
    let resp = app
        .post_json("/v1/jobs/bulk", &json!({ "jobs": jobs }))
        .await;
    assert_eq!(resp.status(), 201);
    assert_eq!(app.job_count().await, 10_000);
}

#[sqlx::test]
async fn idempotency_same_payload_same_job_other_payload_conflict(pool: PgPool) {
    let app = spawn_app(pool).await;
    let first = app
        .post_json(
            "/v1/jobs",
            &json!({"payload": "once", "idempotency_key": "order-1"}),
        )
        .await;
    assert_eq!(first.status(), 201);
    let id = first.json::<Value>().await.unwrap()["id"].as_i64().unwrap();

    let again = app
        .post_json(
            "/v1/jobs",
            &json!({"payload_hex": hex::encode("once"), "idempotency_key": "order-1"}),
        )
        .await;
    assert_eq!(again.status(), 200);
    let body: Value = again.json().await.unwrap();
    assert_eq!(body["id"], id);
    assert_eq!(body["status"], "queued");

    let other = app
        .post_json(
            "/v1/jobs",
            &json!({"payload": "twice", "idempotency_key": "order-1"}),
        )
        .await;
    let (status, code, _) = error_of(other).await;
    assert_eq!((status, code.as_str()), (409, "idempotency_conflict"));
    assert_eq!(app.job_count().await, 1);

    // Bulk: a key already stored with the same payload maps to that job ...
    let resp = app
        .post_json(
            "/v1/jobs/bulk",
            &json!({"jobs": [
                {"payload": "new-a"},
                {"payload": "once", "idempotency_key": "order-1"},
                {"payload": "new-b", "idempotency_key": "order-2"},
                {"payload": "new-b", "idempotency_key": "order-2"}
            ]}),
        )
        .await;
    assert_eq!(resp.status(), 201);
    let ids: Vec<i64> =
        serde_json::from_value(resp.json::<Value>().await.unwrap()["ids"].clone()).unwrap();
    assert_eq!(ids[1], id);
    assert_eq!(ids[2], ids[3], "a key repeated in one request is one job");
    assert_ne!(ids[0], ids[2]);
    assert_eq!(app.job_count().await, 3);

    // ... and one with another payload stops the whole bulk.
    let resp = app
        .post_json(
            "/v1/jobs/bulk",
            &json!({"jobs": [
                {"payload": "would-be-new"},
                {"payload": "changed", "idempotency_key": "order-2"}
            ]}),
        )
        .await;
    let (status, code, message) = error_of(resp).await;
    assert_eq!((status, code.as_str()), (409, "idempotency_conflict"));
    assert!(message.contains("jobs[1]"), "{message}");
    assert_eq!(app.job_count().await, 3, "all or nothing");

    // A key repeated inside one request with two payloads conflicts too.
    let resp = app
        .post_json(
            "/v1/jobs/bulk",
            &json!({"jobs": [
                {"payload": "p1", "idempotency_key": "order-3"},
                {"payload": "p2", "idempotency_key": "order-3"}
            ]}),
        )
        .await;
    assert_eq!(resp.status(), 409);
    assert_eq!(app.job_count().await, 3);
}

#[sqlx::test]
async fn replaying_a_key_draws_no_job_ids(pool: PgPool) {
    let app = spawn_app(pool).await;
    let job = json!({"payload": "replayed", "idempotency_key": "order-15"});
    let first = app.post_json("/v1/jobs", &job).await;
    assert_eq!(first.status(), 201);
    let n = first.json::<Value>().await.unwrap()["id"].as_i64().unwrap();
    for _ in 0..2 {
        let again = app.post_json("/v1/jobs", &job).await;
        assert_eq!(again.status(), 200);
        assert_eq!(again.json::<Value>().await.unwrap()["id"], n);
    }
    let bulk = app
        .post_json("/v1/jobs/bulk", &json!({"jobs": [job.clone(), job]}))
        .await;
    assert_eq!(bulk.status(), 201);
    assert_eq!(bulk.json::<Value>().await.unwrap()["ids"], json!([n, n]));

    let next = app.post_json("/v1/jobs", &json!({"payload": "new"})).await;
    assert_eq!(next.status(), 201);
    assert_eq!(
        next.json::<Value>().await.unwrap()["id"].as_i64().unwrap(),
        n + 1,
        "the replays used up ids"
    );
    // A bulk of one replay and one new job draws one id.
    let bulk = app
        .post_json(
            "/v1/jobs/bulk",
            &json!({"jobs": [{"payload": "replayed", "idempotency_key": "order-15"},
                             {"payload": "newer", "idempotency_key": "order-16"}]}),
        )
        .await;
    assert_eq!(bulk.status(), 201);
    assert_eq!(
        bulk.json::<Value>().await.unwrap()["ids"],
        json!([n, n + 2])
    );
}

#[sqlx::test]
async fn concurrent_submissions_with_one_key_make_one_job(pool: PgPool) {
    let app = spawn_app(pool).await;
    let mut handles = Vec::new();
    for _ in 0..16 {
        let client = app.client.clone();
        let url = app.url("/v1/jobs");
        handles.push(tokio::spawn(async move {
            let resp = client
                .post(url)
                .json(&json!({"payload": "race", "idempotency_key": "same"}))
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            let id = resp.json::<Value>().await.unwrap()["id"].as_i64().unwrap();
            (status, id)
        }));
    }
    let mut results = Vec::new();
    for h in handles {
        results.push(h.await.unwrap());
    }
    assert_eq!(
        results.iter().filter(|(s, _)| *s == 201).count(),
        1,
        "{results:?}"
    );
    assert!(results.iter().all(|(s, _)| *s == 201 || *s == 200));
    assert!(results.windows(2).all(|w| w[0].1 == w[1].1), "{results:?}");
    assert_eq!(app.job_count().await, 1);
}

#[sqlx::test]
async fn api_key_is_required_when_set(pool: PgPool) {
    let app = spawn_app_with(pool, &[("RAREGEN__API__API_KEY", "s3cret-key")]).await;

    let resp = app.post_json("/v1/jobs", &json!({"payload": "x"})).await;
    assert_eq!(resp.headers()["www-authenticate"], "Bearer");
    let (status, code, message) = error_of(resp).await;
    assert_eq!((status, code.as_str()), (401, "unauthorized"));
    assert!(!message.contains("s3cret"));

    for bad in [
        "Bearer wrong",
        "Bearer s3cret-ke",
        "Bearer s3cret-key2",
        "Basic s3cret-key",
        "s3cret-key",
    ] {
        let resp = app
            .client
            .get(app.url("/v1/queue"))
            .header("authorization", bad)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401, "{bad}");
    }
    let resp = app
        .client
        .post(app.url("/v1/jobs"))
        .bearer_auth("s3cret-key")
        .json(&json!({"payload": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    assert_eq!(app.job_count().await, 1);

    // Health endpoints stay open for orchestrators.
    assert_eq!(app.get("/healthz").await.status(), 200);
    assert_eq!(app.get("/readyz").await.status(), 200);
}

#[sqlx::test]
async fn bad_input_gets_a_4xx_and_stores_nothing(pool: PgPool) {
    let app = spawn_app_with(pool, &[("RAREGEN__API__MAX_BODY_BYTES", "4096")]).await;
    let too_long_key = "k".repeat(256);
    let cases: Vec<(&str, String, u16, &str)> = vec![
        ("/v1/jobs", r#"{"payload": "#.into(), 400, "malformed_json"),
        ("/v1/jobs", "not json at all".into(), 400, "malformed_json"),
        ("/v1/jobs", "".into(), 400, "malformed_json"),
        (
            "/v1/jobs",
            r#"{"payload": "a"} trailing"#.into(),
            400,
            "malformed_json",
        ),
        (
            "/v1/jobs",
            r#"{"payload": "a", "payload_hex": "61"}"#.into(),
            422,
            "payload_conflict",
        ),
        ("/v1/jobs", r#"{}"#.into(), 422, "payload_required"),
        (
            "/v1/jobs",
            r#"{"payload": null}"#.into(),
            422,
            "payload_required",
        ),
        (
            "/v1/jobs",
            r#"{"payload_hex": "zz"}"#.into(),
            422,
            "invalid_hex",
        ),
        (
            "/v1/jobs",
            r#"{"payload_hex": "abc"}"#.into(),
            422,
            "invalid_hex",
        ),
        (
            "/v1/jobs",
            r#"{"payload": ""}"#.into(),
            422,
            "empty_payload",
        ),
        (
            "/v1/jobs",
            format!(r#"{{"payload": "{}"}}"#, "x".repeat(81)),
            422,
            "payload_too_large",
        ),
        (
            "/v1/jobs",
            format!(r#"{{"payload_hex": "{}"}}"#, "ab".repeat(81)),
            422,
            "payload_too_large",
        ),
        (
            "/v1/jobs",
            format!(r#"{{"payload": "{}"}}"#, "x".repeat(5000)),
            413,
            "body_too_large",
        ),
        (
            "/v1/jobs",
            r#"{"payload": "a", "colour": "red"}"#.into(),
            422,
            "invalid_field",
        ),
        ("/v1/jobs", r#"{"payload": 5}"#.into(), 422, "invalid_field"),
        (
            "/v1/jobs",
            r#"{"payload": "a", "priority": "high"}"#.into(),
            422,
            "invalid_field",
        ),
        (
            "/v1/jobs",
            r#"{"payload": "a", "priority": 99999}"#.into(),
            422,
            "invalid_field",
        ),
        (
            "/v1/jobs",
            r#"{"payload": "a", "idempotency_key": 12}"#.into(),
            422,
            "invalid_field",
        ),
        (
            "/v1/jobs",
            r#"["payload", "a"]"#.into(),
            422,
            "invalid_field",
        ),
        (
            "/v1/jobs",
            format!(r#"{{"payload": "a", "idempotency_key": "{too_long_key}"}}"#),
            422,
            "invalid_idempotency_key",
        ),
        (
            "/v1/jobs",
            r#"{"payload": "a", "idempotency_key": ""}"#.into(),
            422,
            "invalid_idempotency_key",
        ),
        (
            "/v1/jobs",
            r#"{"payload": "a", "idempotency_key": "nul\u0000inside"}"#.into(),
            422,
            "invalid_idempotency_key",
        ),
        (
            "/v1/jobs",
            r#"{"payload_hex": " cafe "}"#.into(),
            422,
            "invalid_hex",
        ),
        (
            "/v1/jobs/lookup",
            r#"{"ids": [-9223372036854775809]}"#.into(),
            422,
            "invalid_field",
        ),
        ("/v1/jobs/bulk", r#"{"jobs": []}"#.into(), 422, "empty_bulk"),
        ("/v1/jobs/bulk", r#"{}"#.into(), 422, "invalid_field"),
        (
            "/v1/jobs/bulk",
            r#"{"jobs": {"payload": "a"}}"#.into(),
            422,
            "invalid_field",
        ),
        (
            "/v1/jobs/bulk",
            r#"{"jobs": [{"payload": "a"}], "extra": 1}"#.into(),
            422,
            "invalid_field",
        ),
        (
            "/v1/jobs/bulk",
            r#"{"jobs": [{"payload": "a"}, {"payload": "b"}, {"payload_hex": "xyz"}]}"#.into(),
            422,
            "invalid_hex",
        ),
        (
            "/v1/jobs/bulk",
            r#"{"jobs": [{"payload": "a"}, {"payload": "b", "oops": true}]}"#.into(),
            422,
            "invalid_field",
        ),
        (
            "/v1/jobs/bulk",
            r#"{"jobs": [{"payload": "a"}"#.into(),
            400,
            "malformed_json",
        ),
    ];
    for (path, body, want_status, want_code) in &cases {
        let resp = app.post_raw(path, body.clone()).await;
        let (status, code, message) = error_of(resp).await;
        let shown = &body[..body.len().min(80)];
        assert_eq!(
            (status, code.as_str()),
            (*want_status, *want_code),
            "{path} {shown}: {message}"
        );
        assert!(!message.is_empty());
        assert_eq!(app.job_count().await, 0, "{path} {shown} stored something");
    }

    // Messages name the offending field or job.
    let resp = app
        .post_raw(
            "/v1/jobs/bulk",
            r#"{"jobs": [{"payload": "a"}, {"payload": "b"}, {"payload_hex": "xyz"}]}"#,
        )
        .await;
    assert!(error_of(resp).await.2.contains("jobs[2]"));
    let resp = app
        .post_raw("/v1/jobs", r#"{"payload": "a", "priority": "high"}"#)
        .await;
    assert!(error_of(resp).await.2.contains("priority"));
    let resp = app
        .post_raw("/v1/jobs", r#"{"payload": "a", "colour": "red"}"#)
        .await;
    assert!(error_of(resp).await.2.contains("colour"));
}

#[sqlx::test]
async fn type_errors_speak_json_not_rust(pool: PgPool) {
    let app = spawn_app(pool).await;
    let cases: &[(&str, &str, &str)] = &[
        (
            "/v1/jobs",
            r#"{"payload": "a", "priority": 40000}"#,
            "priority: expected an integer from -32768 to 32767, got 40000",
        ),
        (
            "/v1/jobs",
            r#"{"payload": "a", "priority": "x"}"#,
            r#"priority: expected an integer from -32768 to 32767, got "x""#,
        ),
        (
            "/v1/jobs",
            r#"{"payload": "a", "priority": 1.5}"#,
            "priority: expected an integer from -32768 to 32767, got 1.5",
        ),
        (
            "/v1/jobs",
            r#"{"payload": "a", "idempotency_key": 12}"#,
            "idempotency_key: expected a string, got 12",
        ),
        (
            "/v1/jobs",
            r#"{"payload": ["a"]}"#,
            "payload: expected a string, got an array",
        ),
        (
            "/v1/jobs/bulk",
            r#"{"jobs": {"payload": "a"}}"#,
            "jobs: expected an array, got an object",
        ),
        (
            "/v1/jobs/bulk",
            r#"{"jobs": ["a"]}"#,
            r#"jobs[0]: expected an object, got "a""#,
        ),
        (
            "/v1/jobs/lookup",
            r#"{"ids": [1, "two"]}"#,
            r#"ids[1]: expected an integer, got "two""#,
        ),
    ];
    for (path, body, want) in cases {
        let (status, code, message) = error_of(app.post_raw(path, *body).await).await;
        assert_eq!((status, code.as_str()), (422, "invalid_field"), "{body}");
        assert_eq!(message, *want, "{body}");
    }
    assert_eq!(app.job_count().await, 0);
}

#[sqlx::test]
async fn a_bulk_over_ten_thousand_is_refused_whole(pool: PgPool) {
    let app = spawn_app(pool).await;
    let jobs: Vec<Value> = (0..10_001)
        .map(|i| json!({"payload": format!("{i}")}))
        .collect();
    let resp = app
        .post_json("/v1/jobs/bulk", &json!({ "jobs": jobs }))
        .await;
    let (status, code, message) = error_of(resp).await;
    assert_eq!((status, code.as_str()), (422, "too_many_jobs"), "{message}");
    assert_eq!(app.job_count().await, 0);
}

#[sqlx::test]
async fn unknown_jobs_and_routes_are_404(pool: PgPool) {
    let app = spawn_app(pool).await;
    for path in [
        "/v1/jobs/424242",
        "/v1/jobs/abc",
        "/v1/nothing",
        "/elsewhere",
    ] {
        let (status, code, _) = error_of(app.get(path).await).await;
        assert_eq!((status, code.as_str()), (404, "not_found"), "{path}");
    }
}

#[sqlx::test]
async fn readyz_is_503_until_migrations_are_applied(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    assert_eq!(app.get("/healthz").await.status(), 200);
    assert_eq!(app.get("/readyz").await.status(), 200);

    // Pretend a newer binary runs against an older schema.
    sqlx::query("DELETE FROM _sqlx_migrations")
        .execute(&pool)
        .await
        .unwrap();
    let resp = app.get("/readyz").await;
    let (status, code, message) = error_of(resp).await;
    assert_eq!((status, code.as_str()), (503, "not_ready"));
    assert!(message.contains("raregen migrate"), "{message}");
}

/// The README's error table: (code, status) for every code it lists.
fn readme_error_table() -> Vec<(String, u16)> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let start = readme
        .find("| error code | status | when |")
        .expect("the README has the error table");
    readme[start..]
        .lines()
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .flat_map(|row| {
            let cells: Vec<&str> = row.split('|').map(str::trim).collect();
            let status: u16 = cells[2].parse().expect("a status");
            cells[1]
                .split(',')
                .map(|c| c.trim().trim_matches('`').to_owned())
                .map(move |code| (code, status))
                .collect::<Vec<_>>()
        })
        .collect()
}

#[sqlx::test]
async fn the_openapi_document_and_the_readme_name_the_same_routes_and_errors(pool: PgPool) {
    let app = spawn_app_with(pool, &[("RAREGEN__API__API_KEY", "k")]).await;
    // Served without the key, like /metrics.
    let resp = app.get("/openapi.json").await;
    assert_eq!(resp.status(), 200);
    let doc: Value = resp.json().await.unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));

    let mut paths: Vec<&str> = doc["paths"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    paths.sort();
    assert_eq!(
        paths,
        [
            "/healthz",
            "/metrics",
            "/readyz",
            "/v1/batches",
            "/v1/info",
            "/v1/jobs",
            "/v1/jobs/bulk",
            "/v1/jobs/lookup",
            "/v1/jobs/{id}",
            "/v1/pool",
            "/v1/queue",
            "/v1/rate",
        ]
    );
    // Every /v1 operation names the bearer scheme; the health routes need nothing.
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let secured = op["security"][0].get("bearer").is_some();
            assert_eq!(secured, path.starts_with("/v1/"), "{method} {path}");
        }
    }

    // The README's table and the document's ErrorCode list the same codes, and every
    // code is documented, with the README's status, on at least one operation.
    let table = readme_error_table();
    let mut readme_codes: Vec<&str> = table.iter().map(|(c, _)| c.as_str()).collect();
    readme_codes.sort();
    let mut doc_codes: Vec<&str> = doc["components"]["schemas"]["ErrorCode"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    doc_codes.sort();
    let documented_405 = ["method_not_allowed"];
    assert_eq!(
        readme_codes, doc_codes,
        "README error table vs /openapi.json"
    );
    for (code, status) in &table {
        if documented_405.contains(&code.as_str()) {
            // Not an operation's answer: what every route says to another method.
            continue;
        }
        let described = doc["paths"].as_object().unwrap().values().any(|item| {
            item.as_object().unwrap().values().any(|op| {
                op["responses"][status.to_string()]["description"]
                    .as_str()
                    .is_some_and(|d| d.contains(&format!("`{code}`")))
            })
        });
        assert!(
            described,
            "`{code}` ({status}) is on no operation of the document"
        );
    }
}

#[sqlx::test]
async fn another_method_gets_405_with_allow_and_another_media_type_415(pool: PgPool) {
    let app = spawn_app(pool).await;
    for (method, path, allow) in [
        (reqwest::Method::DELETE, "/v1/jobs/7", "GET"),
        (reqwest::Method::GET, "/v1/jobs/bulk", "POST"),
        (reqwest::Method::PUT, "/v1/jobs", "GET, POST"),
        (reqwest::Method::POST, "/healthz", "GET"),
        (reqwest::Method::POST, "/openapi.json", "GET"),
    ] {
        let resp = app
            .client
            .request(method.clone(), app.url(path))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.headers()["allow"], allow, "{method} {path}");
        let (status, code, _) = error_of(resp).await;
        assert_eq!((status, code.as_str()), (405, "method_not_allowed"));
    }
    // A path that is no route stays a 404; a job id that is no i64 too.
    for path in [
        "/v1/nothing",
        "/v1/jobs/9223372036854775808",
        "/v1/jobs/abc",
    ] {
        let (status, code, _) = error_of(app.get(path).await).await;
        assert_eq!((status, code.as_str()), (404, "not_found"), "{path}");
    }
    // What a page of another site can send without a CORS preflight (no type, or a
    // "simple" one) is refused, as is anything else not JSON.
    for kind in [
        None,
        Some("text/plain"),
        Some("multipart/form-data"),
        Some("application/x-www-form-urlencoded"),
        Some("application/xml"),
    ] {
        let mut req = app
            .client
            .post(app.url("/v1/jobs"))
            .body(r#"{"payload": "a"}"#);
        if let Some(kind) = kind {
            req = req.header("content-type", kind);
        }
        let (status, code, _) = error_of(req.send().await.unwrap()).await;
        assert_eq!(
            (status, code.as_str()),
            (415, "unsupported_media_type"),
            "{kind:?}"
        );
    }
    // JSON with parameters, a +json type, and in any case.
    for kind in [
        "application/json; charset=utf-8",
        "application/merge-patch+json",
        "Application/JSON",
    ] {
        let status = app
            .client
            .post(app.url("/v1/jobs"))
            .header("content-type", kind)
            .body(r#"{"payload": "a"}"#)
            .send()
            .await
            .unwrap()
            .status();
        assert!(status == 201 || status == 200, "{kind:?}: {status}");
    }
    assert_eq!(
        app.job_count().await,
        3,
        "the three JSON requests stored a job each, the refused ones none"
    );
}

#[sqlx::test]
async fn what_the_document_calls_valid_is_accepted(pool: PgPool) {
    let app = spawn_app(pool).await;
    // JSON Schema's integers include 5.0; a key is 255 characters, whatever their bytes.
    let key = "é".repeat(255);
    let resp = app
        .post_json(
            "/v1/jobs",
            &json!({"payload": "a", "priority": 5.0, "idempotency_key": key}),
        )
        .await;
    assert_eq!(resp.status(), 201);
    let id = resp.json::<Value>().await.unwrap()["id"].as_i64().unwrap();
    let resp = app
        .post_raw("/v1/jobs/lookup", format!(r#"{{"ids": [{id}.0, 1e300]}}"#))
        .await;
    let (status, code, message) = error_of(resp).await;
    assert_eq!(
        (status, code.as_str()),
        (422, "invalid_field"),
        "1e300 is no i64"
    );
    assert!(message.starts_with("ids[1]"), "{message}");
    let resp = app
        .post_raw("/v1/jobs/lookup", format!(r#"{{"ids": [{id}.0]}}"#))
        .await;
    assert_eq!(resp.status(), 200);
    let jobs = resp.json::<Value>().await.unwrap()["jobs"].clone();
    assert_eq!(jobs[0]["id"], id);
    let job: Value = app
        .get(&format!("/v1/jobs/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(job["priority"], 5);
    assert_eq!(
        job["idempotency_key"].as_str().unwrap().chars().count(),
        255
    );
}

#[sqlx::test]
async fn the_read_endpoints_answer_what_the_database_holds(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let ids: Vec<i64> = app
        .post_json(
            "/v1/jobs/bulk",
            &json!({"jobs": [{"payload": "a"}, {"payload": "b"}, {"payload": "c"}]}),
        )
        .await
        .json::<Value>()
        .await
        .unwrap()["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    sqlx::query(
        "UPDATE publish_jobs SET status = 'failed', last_error = 'refused: test', updated_at = now() - make_interval(secs => id)
         WHERE id = ANY($1)",
    )
    .bind(&ids[..2])
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO batches (owner, size, sent, failed) VALUES ('w1', 3, 1, 2), ('w2', 5, 5, 0)",
    )
    .execute(&pool)
    .await
    .unwrap();

    let failed: Value = app
        .get("/v1/jobs?status=failed&limit=5")
        .await
        .json()
        .await
        .unwrap();
    let listed: Vec<i64> = failed["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_i64().unwrap())
        .collect();
    assert_eq!(listed, vec![ids[0], ids[1]], "newest failure first");
    assert_eq!(failed["jobs"][0]["last_error"], "refused: test");
    let queued: Value = app
        .get("/v1/jobs?status=queued")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(queued["jobs"].as_array().unwrap().len(), 1);
    for bad in [
        "status=lost",
        "status=failed&limit=0",
        "status=failed&limit=501",
        "limit=5",
        "status=failed&colour=red",
    ] {
        let (status, code, _) = error_of(app.get(&format!("/v1/jobs?{bad}")).await).await;
        assert_eq!((status, code.as_str()), (422, "invalid_query"), "{bad}");
    }

    let batches: Value = app.get("/v1/batches?limit=1").await.json().await.unwrap();
    assert_eq!(batches["batches"].as_array().unwrap().len(), 1);
    assert_eq!(batches["batches"][0]["owner"], "w2", "newest first");
    assert_eq!(batches["batches"][0]["sent"], 5);
    let (status, code, _) = error_of(app.get("/v1/batches?limit=101").await).await;
    assert_eq!((status, code.as_str()), (422, "invalid_query"));

    let pool_view: Value = app.get("/v1/pool").await.json().await.unwrap();
    assert_eq!(pool_view["available"], 0);
    assert_eq!(pool_view["capacity"], 0);
    // Two clean lanes, 0 and 3 deep, and a dirty coin: 25 + 22 transactions fundable
    // before the next confirmation (utxo_pool.max_chain_depth = 25).
    for (vout, depth, dirty) in [(0, 0, false), (1, 3, false), (2, 0, true)] {
        sqlx::query(
            "INSERT INTO utxos (txid, vout, satoshis, script_pubkey, unconfirmed_depth, dirty)
             VALUES (repeat('a', 64), $1, 10000, '\\x51', $2, $3)",
        )
        .bind(vout)
        .bind(depth)
        .bind(dirty)
        .execute(&pool)
        .await
        .unwrap();
    }
    let pool_view: Value = app.get("/v1/pool").await.json().await.unwrap();
    assert_eq!(pool_view["available"], 2);
    assert_eq!(pool_view["dirty"], 1);
    assert_eq!(pool_view["max_chain_depth"], 25);
    assert_eq!(pool_view["capacity"], 47);
    let info: Value = app.get("/v1/info").await.json().await.unwrap();
    assert_eq!(info["network"], "regtest");
    assert_eq!(info["rate_limit_max"], 500);
    assert_eq!(info["rate_limit_per_seconds"], 3.0);
    let rate: Value = app.get("/v1/rate").await.json().await.unwrap();
    assert!((rate["limit_per_second"].as_f64().unwrap() - 500.0 / 3.0).abs() < 1e-9);
    assert!(rate["points"].is_array());

    let totals: (i64, i64) = raregen::store::finished_totals(&pool).await.unwrap();
    assert_eq!(totals, (0, 2), "two failed, none sent");
    // Pruned finished jobs still count: the rate never dips when the Pruner deletes.
    sqlx::query("DELETE FROM publish_jobs WHERE id = $1")
        .bind(ids[0])
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("SELECT raregen_compact_job_counts()")
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(
        raregen::store::finished_totals(&pool).await.unwrap(),
        (0, 2)
    );
    let queue: Value = app.get("/v1/queue").await.json().await.unwrap();
    assert_eq!(queue["failed"], 1, "the queue counts what is there");
}
