//! The API against its own OpenAPI document, fuzzed by Schemathesis (PyPI; `scripts/test`
//! installs it into target/tools/): no 5xx, every answer as documented, every refused
//! request stores nothing, undocumented methods answered 405, the bearer scheme
//! enforced. Thousands of generated requests per run.

mod support;

use std::path::PathBuf;
use std::process::Command;

use sqlx::PgPool;
use support::spawn_app_with;

const KEY: &str = "contract-test-key";

fn schemathesis() -> PathBuf {
    let path = std::env::var_os("RAREGEN_SCHEMATHESIS").map_or_else(
        || {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("target/tools/schemathesis/bin/schemathesis")
        },
        PathBuf::from,
    );
    assert!(
        path.exists(),
        "{} is missing: run the tests with scripts/test (it installs Schemathesis)",
        path.display()
    );
    path
}

/// One Schemathesis run; returns how many test cases it generated. Fails the test on any
/// finding, with Schemathesis's own report.
async fn run(base: &str, args: &[&str]) -> u64 {
    let mut command = Command::new(schemathesis());
    // Schemathesis keeps a cache in `.schemathesis/` of its working directory: under
    // target/, not in the tree.
    let workdir = concat!(env!("CARGO_MANIFEST_DIR"), "/target/tools");
    std::fs::create_dir_all(workdir).unwrap();
    command
        .current_dir(workdir)
        .arg("run")
        .arg(format!("{base}/openapi.json"))
        .args(["--header", &format!("Authorization: Bearer {KEY}")])
        .args(["--checks", "all", "--no-color", "--output-truncate", "true"])
        // Examples that failed once are replayed first on the next local run (kept under
        // target/, not in the tree).
        .args([
            "--generation-database",
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/target/tools/schemathesis-examples"
            ),
        ])
        .args(args)
        .env("PYTHONIOENCODING", "utf-8");
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .expect("schemathesis runs");
    let report = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "Schemathesis {args:?} found problems:\n{report}"
    );
    // "  4330 generated, 4330 passed, 2 skipped"
    let generated = report
        .lines()
        .find_map(|l| {
            let (n, rest) = l.trim().split_once(' ')?;
            rest.starts_with("generated")
                .then(|| n.parse::<u64>().ok())?
        })
        .unwrap_or_else(|| panic!("no count of generated cases in:\n{report}"));
    let summary: Vec<&str> = report
        .lines()
        .filter(|l| l.contains("generated") || l.contains("Seed:") || l.contains("  ✅"))
        .collect();
    println!("schemathesis {args:?}:\n{}", summary.join("\n"));
    generated
}

async fn jobs(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM publish_jobs")
        .fetch_one(pool)
        .await
        .unwrap()
}

#[sqlx::test]
async fn the_api_keeps_its_openapi_contract_under_schemathesis(pool: PgPool) {
    let app = spawn_app_with(pool.clone(), &[("RAREGEN__API__API_KEY", KEY)]).await;

    // Negative data first (every request violates the document somewhere: a field, a
    // type, a header, the media type, a method): every one is refused, none stores a
    // job.
    let before = jobs(&pool).await;
    let negative = run(&app.base, &["--mode", "negative", "--max-examples", "400"]).await;
    assert_eq!(
        jobs(&pool).await,
        before,
        "a request the document calls invalid stored a job"
    );

    // Then valid data, stateful sequences included (submit, then read what came back).
    // Text payloads in ASCII: `chain.max_payload_bytes` counts UTF-8 bytes, which the
    // document's maxLength (characters) matches only for ASCII.
    let positive = run(
        &app.base,
        &[
            "--mode",
            "positive",
            "--generation-codec",
            "ascii",
            "--max-examples",
            "150",
        ],
    )
    .await;
    assert!(
        jobs(&pool).await > before,
        "valid submissions stored jobs (the positive run reached the handlers)"
    );
    assert!(
        negative + positive >= 5_000,
        "{negative} + {positive} generated requests: at least 5,000 wanted"
    );
}
