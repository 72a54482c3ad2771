//! This process's identity: the owner named on its claims.

/// `hostname:pid:random`, unique per process start, so that a restarted process never
/// mistakes the claims of its previous life for its own.
pub fn new_worker_id() -> String {
    let host = hostname();
    format!(
        "{host}:{}:{:08x}",
        std::process::id(),
        rand::random::<u32>()
    )
}

pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".to_owned())
}
