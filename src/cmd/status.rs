//! `raregen status`: the operator queries of RareGen's batch worker as tables, or JSON
//! for scripts.

use comfy_table::{presets::UTF8_BORDERS_ONLY, Table};

use crate::config::Settings;
use crate::store::{self, PoolSummary, StatusReport};

pub async fn run(settings: &Settings, json: bool) -> anyhow::Result<()> {
    let pool = store::connect(&settings.database).await?;
    let report = StatusReport::load(&pool).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render(&report));
    }
    Ok(())
}

fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_style(UTF8_BORDERS_ONLY).set_header(header.to_vec());
    t
}

/// The report as text tables.
pub fn render(report: &StatusReport) -> String {
    let mut out = String::new();

    let mut queue = table(&["status", "count", "batches"]);
    for row in &report.queue {
        queue.add_row(vec![
            row.status.clone(),
            row.count.to_string(),
            row.batches.to_string(),
        ]);
    }
    if report.queue.is_empty() {
        queue.add_row(vec!["(no jobs)".to_owned(), "0".into(), "0".into()]);
    }
    out.push_str(&format!("Queue\n{queue}\n\n"));

    let mut batches = table(&[
        "batch",
        "jobs",
        "first_seq",
        "last_seq",
        "created",
        "sent",
        "failed",
    ]);
    for b in &report.batches {
        batches.add_row(vec![
            b.processing_batch_id.to_string(),
            b.jobs.to_string(),
            b.first_seq.map_or("-".into(), |s| s.to_string()),
            b.last_seq.map_or("-".into(), |s| s.to_string()),
            b.created.format("%Y-%m-%d %H:%M:%S").to_string(),
            b.sent.to_string(),
            b.failed.to_string(),
        ]);
    }
    if report.batches.is_empty() {
        batches.add_row(vec!["(none yet)"]);
    }
    out.push_str(&format!("Last batches\n{batches}\n\n"));

    out.push_str(&render_pool(&report.pool));
    out.push('\n');

    match &report.oldest_sending {
        Some(j) => out.push_str(&format!(
            "Oldest job in sending: {} for {:.0}s (txid {})\n",
            j.id,
            j.age_seconds,
            j.txid.as_deref().unwrap_or("-")
        )),
        None => out.push_str("No job in sending.\n"),
    }
    out
}

/// The UTXO pool as a table.
pub fn render_pool(p: &PoolSummary) -> String {
    let mut pool = table(&["utxos", "count", "sats"]);
    pool.add_row(vec![
        "available".to_owned(),
        p.available.to_string(),
        p.available_sats.to_string(),
    ]);
    pool.add_row(vec![
        "reserved".to_owned(),
        p.reserved.to_string(),
        p.reserved_sats.to_string(),
    ]);
    pool.add_row(vec![
        "dirty".to_owned(),
        p.dirty.to_string(),
        p.dirty_sats.to_string(),
    ]);
    pool.add_row(vec![
        "pending".to_owned(),
        p.pending.to_string(),
        "-".into(),
    ]);
    match (p.spent, p.retired) {
        (Some(spent), Some(retired)) => {
            pool.add_row(vec!["spent".to_owned(), spent.to_string(), "-".into()]);
            pool.add_row(vec!["retired".to_owned(), retired.to_string(), "-".into()]);
        }
        _ => {
            pool.add_row(vec![
                "spent or retired (estimate)".to_owned(),
                p.spent_or_retired_estimate.to_string(),
                "-".into(),
            ]);
        }
    }
    format!("UTXO pool\n{pool}\n")
}
